"""The training loop: iteration-based, one readable pass from top to bottom.

Everything a run needs is built from the resolved config by ``Trainer.__init__``; ``Trainer.fit`` runs
``experiment.total_steps`` optimizer steps, each of ``grad_accum_steps`` micro-batches, evaluating, logging and
checkpointing on the configured cadences. The model never sees parallelism: wrapping (activation checkpointing,
DDP, ``torch.compile``) happens in :meth:`Trainer._prepare_model`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import time
import zlib
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.distributed.tensor.experimental import implicit_replication
from torch.distributed.tensor.parallel import loss_parallel

from polymodal.checkpoint.dcp import Checkpointer
from polymodal.checkpoint.rng import seed_everything
from polymodal.checkpoint.weights import build_seeded_model, load_pretrained, materialise_model
from polymodal.config import ConfigError, experiment_config, instantiate
from polymodal.data.multimodal.loader import BAD_SAMPLES_KEY, merge_rank_states
from polymodal.distributed.env import (
    all_reduce_mean,
    gather_objects,
    gradient_sync,
    main_process_first,
    on_any_rank,
    setup_distributed,
)
from polymodal.distributed.groups import set_data_parallel_group
from polymodal.files import RunDirectoryBusy, atomic_output, run_directory_lock
from polymodal.models.hf_directory import read_any_weights
from polymodal.models.meta import DataDict, call_block, checking_keys
from polymodal.tokenizers.carried import TOKENIZERS_DIR, copy_tokenizers
from polymodal.train.batches import batch_size, move_to_device
from polymodal.train.evaluators import EvalContext, build_evaluators, run_evaluators
from polymodal.train.flop_count import StepFlopCounter
from polymodal.train.grad_clip import clip_grad_norm
from polymodal.train.logging import RunLogger, setup_console_logging
from polymodal.train.memory import check_training_state_fits
from polymodal.train.mfu import device_peak_flops
from polymodal.train.micro_batches import micro_batch_mean, micro_batch_shares
from polymodal.train.nonfinite import ForwardState, stop_reason
from polymodal.train.optim import freeze_parameters
from polymodal.train.parallel.mesh import Mesh, ParallelDims
from polymodal.train.parallel.parallelize import parallelize
from polymodal.train.parallel.plans import plan_for, split_sequence
from polymodal.train.plots import plot_loss_curves
from polymodal.train.preemption import StopSignals
from polymodal.train.step_metrics import StepWindow, plain

log = logging.getLogger("polymodal")


class TrainingStopped(RuntimeError):
    """The run stopped on purpose (e.g. too many non-finite steps); a checkpoint was written first."""


class TrainingPreempted(TrainingStopped):
    """The scheduler asked the run to stop (SIGTERM, SIGUSR1); a checkpoint of the current step was written."""


@dataclass
class Progress:
    """What the loop advances; checkpointed beside the model, optimizer, data position and RNGs."""

    step: int = 0
    skipped_steps: int = 0


class Trainer:
    def __init__(self, cfg: DictConfig):
        self.exp = experiment_config(cfg)
        self.config_yaml = OmegaConf.to_yaml(cfg, resolve=True)
        self.env = setup_distributed(self.exp.device, self.exp.distributed.timeout_minutes)
        self.output_dir = Path(self.exp.output_dir)
        setup_console_logging(self.output_dir, self.env.rank, self.exp.debug)
        self.schedule = self._build_schedule(cfg)  # before anything slow is built: a bad fit fails fast

        self.checkpointer = Checkpointer(self.output_dir / "checkpoints", self.exp.keep_last, self.env)
        self.mesh = self._build_mesh()
        self.model, self.train_model = self._build_model(cfg)
        self._forward_state = ForwardState(self.model)
        seed_everything(self.exp.seed + self.env.rank)  # dropout and data-side randomness differ per rank

        dp_rank, dp_world = (self.mesh.dp_rank, self.mesh.dims.dp) if self.mesh else (0, 1)
        self.dp_rank, self.dp_world = dp_rank, dp_world
        with main_process_first(self.env):  # rank 0 trains the tokenizer / fills caches, then the rest read them
            self.data = instantiate(cfg.data, seed=self.exp.seed, dp_rank=dp_rank, dp_world=dp_world)
            self.evaluators = build_evaluators(cfg.get("evaluators"))
        if self.evaluators and self.mesh is not None and self.mesh.dims.cp > 1:
            raise ConfigError("evaluators do not run under context parallelism (cp > 1): remove them or set cp=1")
        if hasattr(self.data.train, "defer_budget_check"):  # checked on every rank at once after each step
            self.data.train.defer_budget_check()
        self.objective: nn.Module = instantiate(cfg.loss).to(self.env.device)
        self.metrics: nn.Module | None = instantiate(cfg.metrics)  # evaluation-only Objective blocks, or None
        if self.metrics is not None:
            self.metrics.to(self.env.device)
        self.optimizer: torch.optim.Optimizer = instantiate(cfg.optim.optimizer, model=self.model)
        self.flop_counter = self._flop_counter(cfg)
        self.progress = Progress()
        self.dtype = torch.bfloat16 if self.exp.precision == "bf16" else torch.float32

    def _build_schedule(self, cfg: DictConfig) -> Any:
        """The LR schedule, fitted to ``experiment.total_steps`` when it knows how (``Schedule.for_run``)."""
        schedule = instantiate(cfg.optim.schedule)
        if not hasattr(schedule, "for_run"):
            return schedule
        try:
            return schedule.for_run(self.exp.total_steps)
        except ValueError as error:
            raise ConfigError(f"optim.schedule: {error}") from error

    def _flop_counter(self, cfg: DictConfig) -> StepFlopCounter | None:
        """FlopCounterMode on a fake-tensor twin built from the same config, for a model without an analytic
        ``train_flops`` (:class:`~polymodal.train.flop_count.StepFlopCounter`); ``None`` when the model counts (and
        ``None`` set later switches counting off: no MFU is logged)."""
        if hasattr(self.model, "train_flops"):
            return None

        def build_twin() -> nn.Module:
            model = instantiate(cfg.model)
            freeze_parameters(model, self.exp.freeze)
            return model

        return StepFlopCounter(build_twin, self.env.device, self._autocast, type(self.model).__name__)

    def _build_mesh(self) -> Mesh | None:
        dims = ParallelDims.from_config(self.exp.distributed, self.env.world_size)  # checked on one process too
        mesh = Mesh.build(dims, self.env.device.type) if self.env.is_distributed else None
        set_data_parallel_group(mesh.group("dp") if mesh else None)  # for objectives that gather the batch
        return mesh

    def _build_model(self, cfg: DictConfig) -> tuple[nn.Module, nn.Module]:
        """Build (on the meta device if asked), load init_from weights, freeze, parallelize, materialise."""
        meta_init = self.exp.distributed.meta_init
        sharded = self.exp.distributed.strategy != "ddp"  # FSDP and TP split the training state over the ranks
        check_training_state_fits(cfg.model, self.env.device, self.env.world_size if sharded else 1)
        model = build_seeded_model(cfg.model, self.exp.seed, meta_init)  # the same initial weights on every rank
        if not meta_init:
            model.to(self.env.device)
        init = self.exp.init_from
        if init.path and self._checkpoint_to_resume() is None:  # fine-tuning start; a resume restores its own
            if meta_init:
                raise ConfigError("experiment.init_from needs experiment.distributed.meta_init=false")
            try:
                load_pretrained(
                    model, init.path, init.include, init.exclude, init.rename, init.strict, reader=read_any_weights
                )
            except ValueError as error:  # weights that do not fit, a Hugging Face config the model cannot express
                raise ConfigError(f"experiment.init_from: {error}") from error
        try:  # before parallelize: DDP fixes at wrap time the parameters whose gradients it waits for
            freeze_parameters(model, self.exp.freeze)
        except ValueError as error:
            raise ConfigError(f"experiment.freeze: {error}") from error
        model, train_model = parallelize(model, self.mesh, self.exp, self.env.device)
        if meta_init:
            materialise_model(model, self.env.device)
        return model, train_model

    def _split_sequence(self, batch: DataDict) -> DataDict:
        """Under context parallelism each CP rank keeps its chunk of the sequence keys."""
        if self.mesh is None or self.mesh.dims.cp == 1:
            return batch
        keys = plan_for(self.model).sequence_keys
        return split_sequence(batch, keys, self.mesh.cp_rank, self.mesh.dims.cp)

    def _autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast(self.env.device.type, dtype=torch.bfloat16, enabled=self.exp.precision == "bf16")

    def _checkpoint_to_resume(self) -> Path | None:
        resume = self.exp.resume
        if resume == "none":
            return None
        if resume == "auto":
            return self.checkpointer.latest()
        path = Path(resume)
        if not path.is_dir():
            raise FileNotFoundError(f"experiment.resume={resume}: no such checkpoint directory")
        return path

    def resume(self) -> None:
        checkpoint = self._checkpoint_to_resume()
        if checkpoint is None:
            return
        state = self.checkpointer.load(checkpoint, self.model, self.optimizer)
        self.progress = Progress(step=state["step"], skipped_steps=state["skipped_steps"])
        try:
            self.data.train.load_state_dict(state["data"])
        except ValueError as error:  # e.g. another global batch: the sample order could not continue
            raise ConfigError(f"{checkpoint}: {error}") from error
        if state["world_size"] != self.env.world_size:
            seed_everything(zlib.crc32(f"{self.exp.seed}/{self.env.rank}/{self.progress.step}".encode()))
        if self.exp.resume != "auto":  # an explicit, possibly earlier, step: the run goes on from there
            self.checkpointer.branch_from(self.progress.step)
        log.info("resumed from %s at step %d", checkpoint, self.progress.step)

    def save_checkpoint(self) -> Path:
        """Checkpoint this step (a collective: all ranks call it). A loader that keeps bad samples gets every
        rank's in the checkpoint, so a resume on any number of ranks keeps counting them all."""
        data_state = self.data.train.state_dict()
        if BAD_SAMPLES_KEY in data_state:
            data_state = merge_rank_states(gather_objects(data_state))
        state = {"skipped_steps": self.progress.skipped_steps, "data": data_state}
        return self.checkpointer.save(self.progress.step, self.model, self.optimizer, state, self.config_yaml)

    def _loss_context(self) -> contextlib.AbstractContextManager:
        """Under loss parallelism the logits are vocabulary-sharded DTensors: the loss (and its backward) runs in
        torch's loss_parallel context, with plain tensors (targets, masks) implicitly replicated."""
        if self.mesh is None or not self.exp.distributed.loss_parallel:
            return contextlib.nullcontext()
        stack = contextlib.ExitStack()
        stack.enter_context(loss_parallel())
        stack.enter_context(implicit_replication())
        return stack

    def forward_loss(self, batch: DataDict) -> tuple[torch.Tensor, dict[str, torch.Tensor], DataDict]:
        """The model's output data_dict, and the objective's loss and named values on it (call it, and run the
        backward, inside :meth:`_loss_context`)."""
        with self._autocast(), checking_keys(self.exp.debug):
            output = call_block(self.train_model, batch, name="model")
            loss, metrics = call_block(self.objective, output, name="loss")
        return loss, metrics, output

    def train_step(self) -> dict[str, torch.Tensor | float]:
        """One optimizer step over ``grad_accum_steps`` micro-batches; tensors in the result stay on device."""
        exp = self.exp
        self.schedule.apply(self.optimizer, self.progress.step, exp.total_steps)
        forward_state_before = self._forward_state.snapshot()
        losses: list[torch.Tensor] = []
        values: dict[str, list[torch.Tensor]] = defaultdict(list)
        started = time.perf_counter()
        batches = [move_to_device(next(self.data.train), self.env.device) for _ in range(exp.grad_accum_steps)]
        data_wait = time.perf_counter() - started
        counting = time.perf_counter()
        counted = [self.flop_counter(batch) for batch in batches] if self.flop_counter is not None else []  # as loaded
        counting_s = time.perf_counter() - counting
        parts = [self._split_sequence(batch) for batch in batches]
        for micro_step, (part, share) in enumerate(zip(parts, micro_batch_shares(self.objective, parts), strict=True)):
            sync = micro_step == exp.grad_accum_steps - 1
            with gradient_sync(self.train_model, enabled=sync), self._loss_context():
                loss, metrics, _ = self.forward_loss(part)
                (loss * share / exp.grad_accum_steps).backward()
            losses.append(plain(loss.detach()) * share)
            for name, value in metrics.items():
                values[name].append(plain(value.detach()) * share)
        samples = float(sum(batch_size(batch) for batch in batches))
        flops = self._step_flops(batches, counted)

        stats: dict[str, torch.Tensor | float] = {"loss": micro_batch_mean(losses)}
        stats.update({name: micro_batch_mean(micro) for name, micro in values.items()})
        max_norm = exp.grad_clip if exp.grad_clip > 0 else math.inf
        grad_norm = plain(clip_grad_norm(self.model.parameters(), max_norm))
        finite = bool(torch.isfinite(stats["loss"]) & torch.isfinite(grad_norm))  # the one host sync per step
        if finite:
            self.optimizer.step()
        else:  # the forward's own updates (EMA codebooks, running statistics) saw the bad batch too: undo them
            self._forward_state.restore(forward_state_before)
        self.optimizer.zero_grad(set_to_none=True)
        self.progress.step += 1
        if not finite:
            self._on_non_finite(stats["loss"], grad_norm)
        stats.update(
            grad_norm=grad_norm.detach(),
            lr=self.optimizer.param_groups[0]["lr"],
            data_wait_s=data_wait,
            flop_counting_s=counting_s,
            flops=flops,
            samples=samples,
        )
        return stats

    def _step_flops(self, batches: list[DataDict], counted: list[float | None]) -> float:
        """The step's training FLOPs: the model's analytic ``train_flops`` on the batches after the forward (4M reads
        what its forward wrote), else the twin's counts of the batches as loaded; 0 when neither is known."""
        if hasattr(self.model, "train_flops"):
            return float(sum(self.model.train_flops(batch) for batch in batches))
        return float(sum(counted)) if counted and None not in counted else 0.0

    def _on_non_finite(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
        """Count a skipped update; stop (with a checkpoint of the last good state) when the policy says so."""
        self.progress.skipped_steps += 1
        what = (
            f"non-finite loss/gradient at step {self.progress.step} (loss={loss.item()}, grad_norm={grad_norm.item()})"
        )
        reason = stop_reason(self.exp.nonfinite, self.progress.skipped_steps)
        if reason is None:
            allowed = self.exp.nonfinite.max_skips
            log.warning("%s: update skipped (%d/%d allowed)", what, self.progress.skipped_steps, allowed)
            return
        checkpoint = self.save_checkpoint()
        raise TrainingStopped(
            f"{what}; stopping because {reason}. The last good state is saved in {checkpoint}: lower the learning "
            f"rate, check the data, or raise experiment.nonfinite.max_skips, then resume."
        )

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        self.train_model.eval()
        sums: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros((), device=self.env.device))
        weigh = getattr(self.objective, "loss_weight", None)
        batches, weight = 0, torch.zeros((), device=self.env.device)
        for batch in self.data.val_batches(self.exp.eval_steps):
            part = self._split_sequence(move_to_device(batch, self.env.device))
            with self._loss_context():
                loss, metrics, output = self.forward_loss(part)
                if self.metrics is not None:
                    with checking_keys(self.exp.debug):
                        metrics = {**metrics, **call_block(self.metrics, output, name="metrics")[1]}
            share = weigh(part).float() if weigh is not None else torch.ones((), device=self.env.device)
            sums["loss"] += plain(loss).float() * share
            for name, value in metrics.items():
                sums[name] += plain(value).float() * share
            batches, weight = batches + 1, weight + share
        self.train_model.train()
        if batches == 0:
            raise ValueError("the validation split produced no batches; check data.val settings")
        names = sorted(sums)
        totals = all_reduce_mean(torch.stack([*(sums[n] for n in names), weight]))  # weighted as in train_step
        means = totals[:-1] / totals[-1].clamp_min(torch.finfo(torch.float32).tiny)
        return dict(zip(names, means.tolist(), strict=True))

    def run_evaluators(self) -> dict[str, float]:
        """Every configured evaluator on the current model (all ranks take part), as ``<name>/<metric>``."""
        dp_group = self.mesh.group("dp") if self.mesh is not None else None
        context = EvalContext(
            self.train_model, self.env.device, self.dp_rank, self.dp_world, dp_group, self._autocast, self.exp.debug
        )
        return run_evaluators(self.evaluators, context)

    def _tokenizer_paths(self) -> dict[str, str]:
        """The tokenizers the data was encoded with (the data module's optional ``tokenizer_paths()``)."""
        return dict(self.data.tokenizer_paths()) if hasattr(self.data, "tokenizer_paths") else {}

    @contextlib.contextmanager
    def _run_directory(self) -> Iterator[None]:
        """The main process holds the output directory for the whole run; a second run on it stops at once."""
        with contextlib.ExitStack() as stack:
            if self.env.is_main:
                try:
                    stack.enter_context(run_directory_lock(self.output_dir))
                except RunDirectoryBusy as busy:
                    raise ConfigError(str(busy)) from None
            yield

    def fit(self) -> dict[str, Any]:
        """Train to ``total_steps``; returns the last train, validation and evaluator metrics."""
        with self._run_directory():
            return self._fit()

    def _fit(self) -> dict[str, Any]:
        exp = self.exp
        self.resume()
        if self.env.is_main:  # only now: a run refused above leaves the previous run's config.yaml as it was
            with atomic_output(self.output_dir / "config.yaml") as path:
                path.write_text(self.config_yaml)
            copy_tokenizers(self._tokenizer_paths(), self.output_dir / TOKENIZERS_DIR)
        peak = exp.peak_flops or device_peak_flops(self.env.device, self.dtype)
        tokens_per_sample = getattr(self.data, "tokens_per_sample", None)  # None: the data is not tokens
        n_params = sum(p.numel() for p in self.model.parameters())
        log.info("model: %.2fM parameters on %s; data: %s", n_params / 1e6, self.env.device, self.data.info())
        run_logger = RunLogger(
            self.output_dir,
            exp.total_steps,
            rank=self.env.rank,
            tensorboard=exp.tensorboard,
            wandb=None if exp.debug else exp.wandb,
            run_name=exp.name,
            config=OmegaConf.to_container(OmegaConf.create(self.config_yaml)),
            start_step=self.progress.step,
        )
        last_train: dict[str, float] = {}
        last_val: dict[str, float] = {}
        last_eval: dict[str, float] = {}
        with run_logger, StopSignals() as stop:
            window = StepWindow(self.env.device, self.dp_world, self.env.world_size, peak, tokens_per_sample)
            while self.progress.step < exp.total_steps:
                window.add(self.train_step())
                step = self.progress.step
                run_logger.advance(step)
                if step % exp.log_every == 0 or step == exp.total_steps:
                    last_train = self._summarise(window)
                    run_logger.log(step, "train", last_train)
                    window.reset()
                if step % exp.eval_every == 0 or step == exp.total_steps:
                    last_val = self.evaluate()
                    run_logger.log(step, "val", last_val)
                    if self.evaluators:
                        last_eval = self.run_evaluators()
                        run_logger.log(step, "eval", last_eval)
                if step % exp.ckpt_every == 0 or step == exp.total_steps:
                    self.save_checkpoint()
                over_budget = self._data_over_budget()
                signalled, any_over_budget = on_any_rank(
                    [stop.received is not None, over_budget is not None], self.env.device
                )
                if any_over_budget:
                    self._stop_over_budget(step, over_budget)
                if signalled:
                    self._save_and_stop(step, stop.received)
        if self.env.is_main:
            self._plot_loss()
        return {"train": last_train, "val": last_val, "eval": last_eval, "step": self.progress.step}

    def _plot_loss(self) -> None:
        """loss.png of the run; a picture never fails a run whose checkpoint is saved (e.g. a resume that logged no
        finite loss), so a failure is a warning."""
        try:
            plot_loss_curves(self.output_dir / "metrics.jsonl", self.output_dir / "loss.png")
        except Exception as error:
            log.warning("no loss plot: %s", error)

    def _data_over_budget(self) -> str | None:
        """This rank's data error budget message, if its loader keeps a budget and is over it."""
        over_budget = getattr(self.data.train, "over_budget", None)
        return over_budget() if over_budget is not None else None

    def _stop_over_budget(self, step: int, message: str | None) -> None:
        """Some rank's data is over its error budget: every rank checkpoints this (complete) step and stops."""
        checkpoint = self._checkpoint_this_step()
        raise TrainingStopped(
            f"{message or 'data error budget exceeded on another rank (its log names the bad samples)'} at step "
            f"{step}; checkpoint in {checkpoint}. Fix or remove the bad samples, or raise data.error_budget, then "
            "resume."
        )

    def _checkpoint_this_step(self) -> Path:
        """The checkpoint of the current step: the one just written on the cadence, else a new one."""
        complete = self.checkpointer.complete_checkpoints()  # no hashing: it was just written by this run
        if complete and complete[-1].name == f"step_{self.progress.step:08d}":
            return complete[-1]
        return self.save_checkpoint()

    def _save_and_stop(self, step: int, received: signal.Signals | None) -> None:
        """Pre-empted or out of time: checkpoint this step (unless just done) and stop; a requeue resumes here."""
        self._checkpoint_this_step()
        why = received.name if received is not None else "a stop signal on another rank"
        raise TrainingPreempted(f"{why} at step {step}: checkpoint saved; run again (or requeue) to resume")

    def _summarise(self, window: StepWindow) -> dict[str, float]:
        """The logging window's numbers, and the data's skipped samples when its loader counts them."""
        summary = window.summary(self.progress.skipped_steps)
        if hasattr(self.data, "skip_counts"):
            summary["skipped_samples"] = self._skipped_samples()
        return summary

    def _skipped_samples(self) -> float:
        """Unreadable samples the loader replaced, each counted once however many ranks and epochs met it (every
        rank's bad samples are gathered), plus the other skips (truncated tars) summed over data-parallel ranks."""
        skipped = float(sum(self.data.skip_counts().values()))
        state = self.data.train.state_dict()
        distinct = 0
        if BAD_SAMPLES_KEY in state:
            skipped -= sum(len(ids) for ids in state[BAD_SAMPLES_KEY].values())
            merged = merge_rank_states(gather_objects(state))
            distinct = sum(len(ids) for ids in merged[BAD_SAMPLES_KEY].values())
        others = all_reduce_mean(torch.tensor(skipped, device=self.env.device)).item() * self.dp_world
        return others + distinct  # TP/CP peers read alike, hence the mean times dp_world
