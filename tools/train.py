"""Train a model from an mmengine config: ``python tools/train.py CONFIG [options]``.

Multi-GPU / multi-node through torchrun: ``torchrun --nproc_per_node=8 tools/train.py CONFIG --launcher pytorch``
(add ``--nnodes=N --node_rank=i --master_addr=HOST --master_port=PORT`` on each node). Without a GPU the same
command runs on CPU processes with the gloo backend.
"""
from __future__ import annotations

import argparse
import os

import torch
from mmengine.config import Config, DictAction
from mmengine.runner import Runner

import ssmzoo.engine  # noqa: F401  (registers ssmzoo's components and the weights-only checkpoint loader)
from ssmzoo.engine.runner import enable_amp, prepare_distributed, resume_checkpoint, set_data_root, set_work_dir


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="config file")
    parser.add_argument("--work-dir", help="where logs and checkpoints go (default: ./work_dirs/<config name>)")
    parser.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CHECKPOINT",
                        help="resume from CHECKPOINT, or with no value from the work dir's last checkpoint")
    parser.add_argument("--amp", nargs="?", const="bf16", default=None, choices=["bf16", "fp16"],
                        help="automatic mixed precision on the GPU (default dtype bf16; fp16 adds loss scaling)")
    parser.add_argument("--auto-scale-lr", action="store_true",
                        help="scale the lr by (total batch) / auto_scale_lr.base_batch_size of the config")
    parser.add_argument("--data-root", help="dataset root replacing every data_root of the config")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, default={},
                        help="override config entries: key=value (nested keys with dots)")
    parser.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none",
                        help="job launcher (pytorch: torchrun)")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    cfg = Config.fromfile(args.config)
    cfg.merge_from_dict(args.cfg_options)
    set_work_dir(cfg, args.work_dir, args.config)
    if args.data_root:
        set_data_root(cfg, args.data_root)
    if args.amp:
        enable_amp(cfg, args.amp)
    if args.auto_scale_lr:
        if "auto_scale_lr" not in cfg or "base_batch_size" not in cfg.auto_scale_lr:
            raise KeyError("--auto-scale-lr: the config has no auto_scale_lr.base_batch_size")
        cfg.auto_scale_lr.enable = True
    if args.resume is not None:
        cfg.resume = True
        cfg.load_from = resume_checkpoint(cfg.work_dir) if args.resume == "auto" else args.resume
    prepare_distributed(cfg, args.launcher)
    runner = Runner.from_cfg(cfg)
    runner.train()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # Tear the process group down here: left to interpreter exit, gloo's threads were sometimes destroyed while
        # still joinable ("terminate called without an active exception", SIGABRT after a finished run).
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
