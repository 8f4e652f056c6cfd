"""Evaluate a checkpoint on a config's test set: ``python tools/test.py CONFIG CHECKPOINT [options]``.

The metrics (top-1/top-5, or mIoU/mAcc/aAcc) are logged and written to the work dir. Distributed evaluation:
``torchrun --nproc_per_node=N tools/test.py CONFIG CHECKPOINT --launcher pytorch``.
"""
from __future__ import annotations

import argparse
import os

from mmengine.config import Config, DictAction
from mmengine.runner import Runner

import ssmzoo.engine  # noqa: F401  (registers ssmzoo's components and the weights-only checkpoint loader)
from ssmzoo.engine.runner import disable_pretrained, prepare_distributed, set_data_root, set_work_dir


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="config file")
    parser.add_argument("checkpoint", help="checkpoint file (tools/train.py's, or a state_dict of the model)")
    parser.add_argument("--work-dir", help="where logs and metrics go (default: ./work_dirs/<config name>)")
    parser.add_argument("--data-root", help="dataset root replacing every data_root of the config")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, default={},
                        help="override config entries: key=value (nested keys with dots)")
    parser.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    cfg = Config.fromfile(args.config)
    cfg.merge_from_dict(args.cfg_options)
    set_work_dir(cfg, args.work_dir, args.config)
    if args.data_root:
        set_data_root(cfg, args.data_root)
    if not os.path.isfile(args.checkpoint):
        raise FileNotFoundError(f"checkpoint {args.checkpoint} not found")
    disable_pretrained(cfg)  # the checkpoint holds every weight
    cfg.load_from = args.checkpoint
    cfg.resume = False
    prepare_distributed(cfg, args.launcher)
    runner = Runner.from_cfg(cfg)
    return runner.test()


if __name__ == "__main__":
    main()
