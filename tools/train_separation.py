"""Train a speech separator with negative SI-SNR under PIT, then evaluate SI-SNRi / SDRi on the tt split.

The Mamba-TasNet recipe (``hparams/WSJ0Mix/dpmamba_*.yaml``) in a small, single-file loop that the mmengine tool of
issue #8 can absorb piece by piece (data -> model -> loss -> optimiser / schedule -> checkpoint -> evaluation):

- data: dynamic mixing from ``<data>/speakers/tr`` when that folder exists (the official recipe mixes on the fly
  from WSJ0 ``si_tr_s``, with speed perturbation 95/100/105 %), else the fixed ``<data>/tr/{mix,s1,s2}`` mixtures;
  crops of ``--segment`` seconds;
- loss: :func:`ssmzoo.tasks.separation.pit_si_snr_loss` (items already above 40 dB SI-SNR dropped, as
  ``threshold_byloss``), non-finite or huge losses skipped;
- Adam (no weight decay), linear warm-up then cosine decay to 1 % of ``--lr``, gradient-norm clipping at 5;
- ``last.pt`` in the work dir every ``--ckpt-every`` steps and at the end (written atomically); ``--resume`` goes on
  from it, also after a crash or a ``--time-budget`` stop;
- evaluation on ``<data>/tt`` (whole mixtures, batch 1): mean SI-SNR, SI-SNRi, SDR, SDRi -> ``results.json``.

``--model`` is any ssmzoo separator (``dpmamba_xs``) or ``convtasnet`` (torchaudio's Conv-TasNet with its default,
paper configuration: the baseline). Examples::

    python tools/make_mixtures.py data/tts2mix
    python tools/train_separation.py --model dpmamba_xs --data data/tts2mix --work-dir work_dirs/dpmamba_xs \\
        --steps 4000 --batch-size 8 --segment 4 --device cuda
    python tools/train_separation.py --model dpmamba_xs --data data/tts2mix --work-dir work_dirs/dpmamba_xs \\
        --eval-only                                   # evaluate work_dirs/dpmamba_xs/last.pt on tt
    python tools/train_separation.py ... --export weights/dpmamba_xs_tts2mix.safetensors   # model weights only

For real data point ``--data`` at a folder holding ``tr``, ``cv``, ``tt`` (``.../2speakers/wav8k/min``) and, for
dynamic mixing, ``speakers/tr/<speaker>/*.wav`` (e.g. links to WSJ0 ``si_tr_s`` resampled to 8 kHz).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import ssmzoo  # noqa: E402
from ssmzoo.tasks.separation import pit_si_snr_loss, separation_metrics  # noqa: E402
from ssmzoo.tasks.separation_data import DynamicMixDataset, Wsj0MixDataset, collate_separation  # noqa: E402

FIT_STEPS = 20  # timed steps before the schedule is fitted to --time-budget


class TorchaudioConvTasNet(nn.Module):
    """torchaudio's ``ConvTasNet`` (default: the paper's best configuration, 5.1 M parameters, 16-tap encoder at
    stride 8) with the separators' interface: ``(B, T) -> (B, S, T)``, ``sample_rate``, ``num_spks``."""

    def __init__(self, num_spks: int = 2, sample_rate: int = 8000, **kwargs) -> None:
        super().__init__()
        from torchaudio.models import ConvTasNet

        self.num_spks, self.sample_rate = num_spks, sample_rate
        self.net = ConvTasNet(num_sources=num_spks, **kwargs)

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        return self.net(mix.unsqueeze(1))


def build(name: str) -> nn.Module:
    if name == "convtasnet":
        return TorchaudioConvTasNet()
    return ssmzoo.create_model(name)


def lr_factor(step: int, warmup: int, total: int, final: float = 0.01) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine from 1 to ``final`` at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * progress))


def train_data(args) -> torch.utils.data.Dataset:
    bank = Path(args.data) / "speakers" / "tr"
    if bank.is_dir() and not args.fixed_mixtures:
        return DynamicMixDataset(bank, num_mixtures=args.steps * args.batch_size, segment=args.segment,
                                 speed_perturb=(0.95, 1.0, 1.05), preload=True, seed=args.seed)
    return Wsj0MixDataset(args.data, "tr", segment=args.segment, random_crop=True, seed=args.seed)


def save_atomic(obj, path: Path) -> None:
    tmp = path.with_suffix(".partial")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def pick_backend(model: nn.Module, device: torch.device, batch: dict, log) -> None:
    """On CUDA, time the scan's Triton and chunked backends on one batch and keep the faster one when their outputs
    agree (compared with TF32 off, so that only the scans differ); a Triton kernel that fails to compile or run, or
    disagrees, leaves the chunked PyTorch path. SSMZOO_BACKEND, when set, is used as it is."""
    if device.type != "cuda" or os.environ.get("SSMZOO_BACKEND") or not any(
            "A_log" in n for n, _ in model.named_parameters()):
        return
    mix = batch["mix"][:2].to(device)
    tf32 = torch.backends.cuda.matmul.allow_tf32
    results = {}
    for backend in ("chunked", "triton"):
        os.environ["SSMZOO_BACKEND"] = backend
        try:
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
            with torch.no_grad():
                ref = model.eval()(mix).float()
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
            model.train()
            out = model(mix)
            out.square().mean().backward()
            torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(3):
                model(mix).square().mean().backward()
            torch.cuda.synchronize()
            results[backend] = ((time.perf_counter() - start) / 3, ref)
        except Exception as err:  # a kernel that does not compile or run here: use the other path
            log(f"backend {backend} failed: {type(err).__name__}: {str(err)[:300]}")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
    model.zero_grad(set_to_none=True)
    choice = "chunked"
    if "triton" in results and "chunked" in results:
        ref, got = results["chunked"][1], results["triton"][1]
        rel = float((got - ref).abs().max() / ref.abs().max().clamp_min(1e-12))
        log(f"backend step times: chunked {results['chunked'][0]:.3f}s, triton {results['triton'][0]:.3f}s; "
            f"eval outputs (TF32 off) max |triton - chunked| / max |chunked| = {rel:.2e}")
        # fp32 scans in another order drift apart through 16 mixers: 1e-2 still separates a kernel bug from that.
        if rel < 1e-2 and results["triton"][0] < results["chunked"][0]:
            choice = "triton"
    os.environ["SSMZOO_BACKEND"] = choice
    log(f"selective_scan backend: {choice}")


def run_with_fallback(fn, log):
    """``fn()``; if the Triton scan raises, log it, switch to the chunked backend for the rest of the run, retry."""
    try:
        return fn()
    except Exception as err:
        if os.environ.get("SSMZOO_BACKEND") != "triton":
            raise
        log(f"triton backend failed ({type(err).__name__}: {str(err)[:300]}); using chunked from here on")
        os.environ["SSMZOO_BACKEND"] = "chunked"
        return fn()


def evaluate(model: nn.Module, args, device: torch.device, log) -> dict:
    data = Wsj0MixDataset(args.data, "tt", random_crop=False)
    n = min(len(data), args.eval_items) if args.eval_items else len(data)
    model.eval()
    sums: dict[str, float] = {}
    with torch.no_grad():  # not inference_mode: the CUDA scan kernels' custom op refuses inference tensors
        for i in range(n):
            item = data[i]
            est = run_with_fallback(lambda mix=item["mix"]: model(mix[None].to(device)).float(), log)
            metrics = separation_metrics(est, item["sources"][None].to(device), item["mix"][None].to(device),
                                         sdr=not args.no_sdr)
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + float(v.sum())
    results = {k: v / n for k, v in sums.items()}
    results["n_mixtures"] = n
    log("tt: " + ", ".join(f"{k} {v:.2f}" for k, v in results.items() if k != "n_mixtures") + f" ({n} mixtures)")
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="dpmamba_xs", help="ssmzoo separator name, or 'convtasnet' (torchaudio)")
    p.add_argument("--data", required=True, help="corpus root holding tr/cv/tt (and speakers/tr for dynamic mixing)")
    p.add_argument("--work-dir", required=True, type=Path)
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--segment", type=float, default=4.0, help="training crop in seconds")
    p.add_argument("--lr", type=float, default=1.5e-4, help="peak learning rate (official: 1.5e-4 at batch 1)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps (default: 5 %% of --steps)")
    p.add_argument("--clip", type=float, default=5.0)
    p.add_argument("--fixed-mixtures", action="store_true", help="train on tr/ mixtures even if speakers/tr exists")
    p.add_argument("--time-budget", type=float, default=None,
                   help="seconds of training; a fresh run fits its schedule (at most --steps) to this budget")
    p.add_argument("--ckpt-every", type=int, default=500)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--resume", action="store_true", help="continue from <work-dir>/last.pt if it exists")
    p.add_argument("--init", type=Path, default=None, help="start from these weights (safetensors or .pt)")
    p.add_argument("--extend", action="store_true",
                   help="with --resume: train on to --steps (or for a new --time-budget) instead of the saved plan")
    p.add_argument("--eval-only", action="store_true", help="evaluate <work-dir>/last.pt (or --checkpoint)")
    p.add_argument("--checkpoint", type=Path, default=None)
    p.add_argument("--eval-items", type=int, default=0, help="evaluate on the first N tt mixtures (0: all)")
    p.add_argument("--no-sdr", action="store_true", help="skip SDR (slow on a CPU)")
    p.add_argument("--export", type=Path, default=None, help="write the model weights as safetensors and exit")
    p.add_argument("--export-dtype", choices=("float32", "float16"), default="float32")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--num-workers", type=int, default=min(6, os.cpu_count() or 1))
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    args.work_dir.mkdir(parents=True, exist_ok=True)
    log_file = open(args.work_dir / "log.txt", "a")

    def log(msg: str) -> None:
        print(msg, flush=True)
        log_file.write(msg + "\n")
        log_file.flush()

    device = torch.device(args.device)
    if device.type == "cuda":
        # TF32 matmuls and convolutions: the scan itself stays in float32.
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(args.seed)
    model = build(args.model).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    ckpt_path = args.checkpoint or args.work_dir / "last.pt"
    if args.init is not None:  # warm start from weights only (a fresh optimiser and schedule)
        from ssmzoo import hub

        model.load_state_dict(hub.load_state_dict(args.init))
        log(f"initialised from {args.init}")

    if args.eval_only or args.export:
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        if args.export:
            from safetensors.torch import save_file

            args.export.parent.mkdir(parents=True, exist_ok=True)
            dtype = getattr(torch, args.export_dtype)
            save_file({k: v.to(dtype).contiguous() for k, v in model.state_dict().items()}, str(args.export),
                      metadata={"model": args.model, "step": str(state["step"])})
            log(f"wrote {args.export} ({args.model}, step {state['step']})")
            return 0
        results = dict(evaluate(model, args, device, log), model=args.model, step=state["step"])
        (args.work_dir / "results.json").write_text(json.dumps(results, indent=1))
        return 0

    # The schedule's length; with --time-budget on a fresh run it is re-fitted to the budget after FIT_STEPS timed
    # steps, so the cosine reaches its end when the time runs out rather than being cut short.
    plan = {"total": args.steps, "warmup": args.warmup if args.warmup is not None else max(1, args.steps // 20)}
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, plan["warmup"], plan["total"]))
    step, train_time, fitted = 0, 0.0, args.time_budget is None
    if args.resume and ckpt_path.is_file():
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, train_time, fitted = state["step"], state.get("train_time", 0.0), True
        plan.update(state.get("plan", {}))
        if args.extend:  # a longer schedule: the cosine is stretched from here to --steps (or to the new budget)
            plan["total"], fitted = max(step + 1, args.steps), args.time_budget is None
            train_time = 0.0 if args.time_budget is not None else train_time
        log(f"resumed from {ckpt_path} at step {step} of {plan['total']}")

    def checkpoint(total_time: float) -> None:
        save_atomic({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "step": step, "train_time": total_time, "plan": plan,
                     "args": {k: str(v) for k, v in vars(args).items()}}, ckpt_path)

    data = train_data(args)
    log(f"{args.model}: {n_params / 1e6:.3f} M parameters; {len(data)} training items "
        f"({type(data).__name__}), batch {args.batch_size} x {args.segment} s, up to {args.steps} steps, "
        f"device {device}")
    loader_kwargs = dict(batch_size=args.batch_size, shuffle=isinstance(data, Wsj0MixDataset),
                         num_workers=args.num_workers, collate_fn=collate_separation, drop_last=True)
    epoch = step * args.batch_size // len(data)
    data.set_epoch(epoch)
    batches = iter(DataLoader(data, **loader_kwargs))
    # train_time counts the steps (data loading included), not the backend probe or the checkpoint writes.
    first, last, run_steps, run_time, skipped = True, time.perf_counter(), 0, 0.0, 0
    window = {"steps": 0, "loss": 0.0, "time": 0.0}
    while step < plan["total"]:
        try:
            batch = next(batches)
        except StopIteration:
            epoch += 1
            data.set_epoch(epoch)
            batches = iter(DataLoader(data, **loader_kwargs))
            continue
        if first:
            pick_backend(model, device, batch, log)
            first, last = False, time.perf_counter()
        model.train()
        optimizer.zero_grad(set_to_none=True)

        def forward_backward(batch=batch):
            loss = pit_si_snr_loss(model(batch["mix"].to(device)), batch["sources"].to(device))
            if torch.isfinite(loss) and loss.item() <= 999999:
                loss.backward()
            return loss

        loss = run_with_fallback(forward_backward, log)
        if not torch.isfinite(loss) or loss.item() > 999999:
            optimizer.zero_grad(set_to_none=True)
            skipped += 1
            continue
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        optimizer.step()
        scheduler.step()
        step, run_steps = step + 1, run_steps + 1
        now = time.perf_counter()
        dt, last = now - last, now
        train_time, run_time = train_time + dt, run_time + dt
        window["steps"] += 1
        window["loss"] += loss.item()
        window["time"] += dt
        if not fitted and run_steps == FIT_STEPS:
            per_step = run_time / run_steps
            plan["total"] = min(args.steps, step + int((args.time_budget - train_time) / per_step))
            plan["warmup"] = args.warmup if args.warmup is not None else max(1, plan["total"] // 20)
            fitted = True
            log(f"{per_step:.3f} s per step: schedule fitted to {plan['total']} steps (warm-up {plan['warmup']}) "
                f"for the {args.time_budget:.0f} s budget")
        if step % args.log_every == 0:
            log(f"step {step}/{plan['total']} loss {window['loss'] / window['steps']:.3f} "
                f"lr {scheduler.get_last_lr()[0]:.2e} {window['steps'] / window['time']:.2f} steps/s, "
                f"skipped {skipped}")
            window = {"steps": 0, "loss": 0.0, "time": 0.0}
        if step % args.ckpt_every == 0:
            checkpoint(train_time)
            last = time.perf_counter()
        if args.time_budget is not None and train_time > args.time_budget:
            break
    checkpoint(train_time)
    log(f"stopped at step {step} of {plan['total']} after {train_time:.0f} s of training")
    results = dict(evaluate(model, args, device, log), model=args.model, step=step, train_time_s=train_time,
                   params=n_params, batch_size=args.batch_size, segment_s=args.segment, lr=args.lr,
                   dynamic_mixing=isinstance(data, DynamicMixDataset),
                   backend=os.environ.get("SSMZOO_BACKEND", "default"))
    (args.work_dir / "results.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
