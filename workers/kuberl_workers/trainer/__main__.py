"""`python -m kuberl_workers.trainer`: one rank of the trainer gang (rank = $KUBERL_INDEX)."""

from __future__ import annotations

import functools
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from kuberl_workers import batch_codec
from kuberl_workers.client import ControllerClient
from kuberl_workers.config import (
    ENV_CONTROLLER_URL,
    ENV_INDEX,
    ENV_POD_IP,
    ENV_TRAINER_MASTER,
    ENV_WORKER_ID,
)
from kuberl_workers.entry import start

log = logging.getLogger("kuberl.trainer")
POLL_SECONDS = 0.2
WAIT_REPORT_SECONDS = 60.0


class Heartbeats(threading.Thread):
    """Heartbeats from a thread, so a long training step does not look like a dead trainer; but only while the
    main loop shows progress (a poll or a micro-batch) within `stall_seconds`: a hung rank stops beating.
    """

    def __init__(self, client: ControllerClient, worker: str, every: float, stall_seconds: float) -> None:
        super().__init__(daemon=True, name="trainer-heartbeats")
        self.client, self.worker, self.every, self.stall_seconds = client, worker, every, stall_seconds
        self.version = 0
        self._last = time.monotonic()
        self._halt = threading.Event()

    def progress(self, version: int) -> None:
        self.version, self._last = version, time.monotonic()

    def stop(self) -> None:
        self._halt.set()

    def run(self) -> None:
        while not self._halt.wait(self.every):
            if time.monotonic() - self._last > self.stall_seconds:
                log.warning("no training progress for %.0fs: heartbeats paused", time.monotonic() - self._last)
                continue
            try:
                self.client.call(
                    "POST", "/v1/workers/heartbeat", {"worker": self.worker, "role": "trainer", "version": self.version}
                )
            except Exception as error:  # the main loop sees a lost controller too; the thread must not die
                log.warning("heartbeat failed: %s", error)


def main() -> int:
    cfg, token = start("trainer", __doc__ or "", needs=(ENV_CONTROLLER_URL,))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s trainer %(name)s: %(message)s")
    import torch
    import torch.distributed as dist
    from prometheus_client import CollectorRegistry, Gauge, Histogram
    from transformers import AutoConfig

    from kuberl_workers.models import model_dir
    from kuberl_workers.trainer.resume import ResumeMismatch, agree_resume_step
    from kuberl_workers.trainer.server import serve
    from kuberl_workers.trainer.step import make_optimizer, train_step
    from kuberl_workers.trainer.strategy import StrategyOptions, make_strategy

    rank = int(os.environ.get(ENV_INDEX, "0"))
    world = cfg.scale.trainerReplicas
    worker = os.environ.get(ENV_WORKER_ID, f"{cfg.job}-trainer-{rank}")
    host = os.environ.get(ENV_POD_IP, "127.0.0.1")
    controller = ControllerClient(os.environ[ENV_CONTROLLER_URL], token)
    ckpt_dir = Path(cfg.checkpoint.dir)
    labels = {"job": cfg.job, "namespace": cfg.namespace, "role": "trainer"}

    torch.manual_seed(cfg.seed)
    gpu = torch.cuda.is_available()
    if world > 1:
        master = os.environ.get(ENV_TRAINER_MASTER, "127.0.0.1")
        dist.init_process_group(
            "nccl" if gpu else "gloo", init_method=f"tcp://{master}:{cfg.ports.rendezvous}", rank=rank, world_size=world
        )
    device = torch.device(f"cuda:{torch.cuda.current_device()}" if gpu else "cpu")
    dtype = {
        "auto": torch.bfloat16 if gpu else torch.float32,
        "float32": torch.float32,
        "bfloat16": torch.bfloat16,
        "float16": torch.float16,
    }[cfg.model.dtype]
    directory = model_dir(cfg.model, cfg.seed)
    try:  # trainer/strategy.py: ddp, or fsdp2 (trainer/fsdp2.py)
        options = StrategyOptions(rank, world, device, dtype, cfg.trainer.shardGroupSize)
        strategy = make_strategy(cfg.scale.trainerStrategy, options)
    except ValueError as error:  # the API refuses these; a hand-written config may not
        log.error("%s", error)
        return 2

    def trained(pretrained: Any) -> None:  # a transformers PreTrainedModel
        if cfg.trainer.gradientCheckpointing:
            pretrained.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        pretrained.config.use_cache = False

    model: torch.nn.Module = strategy.load(Path(directory), strategy.master_dtype(), trained)  # collective
    config = AutoConfig.from_pretrained(directory)
    pad_id = int(config.pad_token_id or config.eos_token_id or 0)
    optimizer = make_optimizer(model, cfg.algorithm)
    reference: torch.nn.Module | None = None
    if cfg.algorithm.klCoef > 0:  # the frozen initial policy of the KL penalty; nothing is loaded without it

        def frozen(pretrained: torch.nn.Module) -> None:
            pretrained.eval().requires_grad_(False)

        reference = strategy.load(Path(directory), dtype, frozen, trainable=False)

    registry = CollectorRegistry()
    names = list(labels)
    gauges = {
        name: Gauge(f"kuberl_trainer_{name}", doc, names, registry=registry).labels(**labels)
        for name, doc in {
            "loss": "Training loss of the last step",
            "grad_norm": "Gradient norm before clipping",
            "icepop_masked_fraction": "Fraction of completion tokens IcePop masked",
            "logp_diff_mean": "Mean |log pi_train - log pi_infer| over completion tokens",
            "logp_diff_max": "Max |log pi_train - log pi_infer| over completion tokens",
            "kl_ref": "Mean k3 KL to the reference policy per completion (0 when algorithm.klCoef is 0)",
            "entropy": "Mean policy entropy over completion tokens, nats (before the step's update)",
            "clipped_fraction": "Fraction of completion tokens whose policy ratio was clipped",
            "micro_batches": "Forward/backward passes in the last step",
            "step": "Training steps done",
            "weight_publish_bytes": "Bytes of the last published weights",
        }.items()
    }
    train_seconds = Histogram(
        "kuberl_trainer_step_seconds", "Training seconds per step", names, registry=registry
    ).labels(**labels)
    publish_seconds = Histogram(
        "kuberl_trainer_weight_publish_seconds", "Seconds to publish weights", names, registry=registry
    ).labels(**labels)
    server = serve(host, cfg.ports.trainer, registry, ckpt_dir if rank == 0 else None, token)

    def register(offered: int) -> int:
        _, reply = controller.call(
            "POST", "/v1/workers/register", {"worker": worker, "role": "trainer", "step": offered, "address": host}
        )
        return int(reply["resumeStep"])

    def gang_min(value: int) -> int:
        if world == 1:
            return value
        tensor = torch.tensor([value], dtype=torch.int64, device=device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
        return int(tensor.item())

    try:
        step = agree_resume_step(functools.partial(strategy.newest_checkpoint, ckpt_dir), register, gang_min)
    except ResumeMismatch as error:
        log.error("%s", error)
        return 1
    if step > 0 and strategy.load_checkpoint(ckpt_dir, model, optimizer, max_step=step) != step:
        log.error("the checkpoint of step %d could not be loaded", step)
        return 1
    log.info("rank %d/%d resumes at step %d (%s)", rank, world, step, strategy.name)

    def weights_uri(path: Path, version: int) -> str:
        return f"file://{path}" if cfg.checkpoint.shared else f"http://{host}:{cfg.ports.trainer}/weights/{version}"

    if step > 0:
        # rollout engines may be told to load this version again (after a controller restart): make sure the
        # files exist even if they were pruned since
        resumed = strategy.publish(ckpt_dir, step, model, cfg.checkpoint.keep + 1, Path(directory))  # collective
        if resumed is not None:  # rank 0: the gang that saved this checkpoint may have died before it announced
            # the version, and the controller would wait for it while we wait for its next batch. Announcing it
            # again is a no-op ("replayed") where the controller has it already.
            controller.call(
                "POST",
                "/v1/trainer/published",
                {"version": step, "weightsUri": weights_uri(resumed[0], step), "checkpoint": True, "trainSeconds": 0.0},
            )

    beats = Heartbeats(controller, worker, cfg.fault.heartbeatSeconds, stall_seconds=cfg.fault.leaseSeconds)
    beats.start()
    waiting_since, reported = time.monotonic(), 0.0
    while step < cfg.algorithm.steps:
        beats.progress(step)
        # binary per-token arrays: a fraction of the JSON lists' cost to encode and parse (batch_codec.py)
        status, batch = controller.call("GET", f"/v1/trainer/batch?step={step}&encoding=binary")
        if status == 410:
            break
        if status == 409:  # the controller went back (restored an older checkpoint): the gang must restart with it
            log.error("batch of step %d: %s", step, batch.get("error") if isinstance(batch, dict) else batch)
            return 3
        if status == 204:
            waited = time.monotonic() - waiting_since
            if waited >= reported + WAIT_REPORT_SECONDS:  # the controller's status says why; the log says we wait
                reported = waited
                log.info("waiting %.0fs for the batch of step %d (rollouts still generating)", waited, step)
            time.sleep(POLL_SECONDS)
            continue
        waiting_since, reported = time.monotonic(), 0.0
        stats = train_step(
            model,
            optimizer,
            batch_codec.decode(batch),
            cfg.algorithm,
            temperature=cfg.task.temperature,
            pad_id=pad_id,
            rank=rank,
            world=world,
            max_tokens_per_micro_batch=cfg.trainer.maxTokensPerMicroBatch,
            reference=reference,
            progress=functools.partial(beats.progress, step),
            strategy=strategy,
        )
        train_seconds.observe(stats.train_seconds)
        for name, value in (
            ("loss", stats.loss),
            ("grad_norm", stats.grad_norm),
            ("icepop_masked_fraction", stats.masked_fraction),
            ("logp_diff_mean", stats.mean_abs_logp_diff),
            ("logp_diff_max", stats.max_abs_logp_diff),
            ("kl_ref", stats.kl_ref),
            ("entropy", stats.entropy),
            ("clipped_fraction", stats.clipped_fraction),
            ("micro_batches", stats.micro_batches),
        ):
            gauges[name].set(value)
        version = step + 1
        checkpointed = version % cfg.checkpoint.everySteps == 0 or version == cfg.algorithm.steps
        began = time.perf_counter()
        published = strategy.publish(ckpt_dir, version, model, cfg.checkpoint.keep + 1, Path(directory))  # collective
        if checkpointed:
            strategy.save_checkpoint(ckpt_dir, version, model, optimizer, cfg.checkpoint.keep)  # collective
        if published is not None:  # rank 0
            path, size = published
            publish_seconds.observe(time.perf_counter() - began)
            gauges["weight_publish_bytes"].set(size)
            uri = weights_uri(path, version)
            controller.call(
                "POST",
                "/v1/trainer/published",
                {
                    "version": version,
                    "weightsUri": uri,
                    "checkpoint": checkpointed,
                    "trainSeconds": stats.train_seconds,
                    "stats": {
                        "loss": stats.loss,
                        "gradNorm": stats.grad_norm,
                        "klRef": stats.kl_ref,
                        "entropy": stats.entropy,
                        "icepopMaskedFraction": stats.masked_fraction,
                        "clippedFraction": stats.clipped_fraction,
                        "logpDiffMean": stats.mean_abs_logp_diff,
                        "logpDiffMax": stats.max_abs_logp_diff,
                        "microBatches": stats.micro_batches,
                        "updates": stats.updates,
                    },
                },
            )
        log.info(
            "step %d: loss %.4f reward %.3f masked %.4f grad %.3f kl_ref %.4f micro-batches %d in %.1fs",
            version,
            stats.loss,
            stats.reward_mean,
            stats.masked_fraction,
            stats.grad_norm,
            stats.kl_ref,
            stats.micro_batches,
            stats.train_seconds,
        )
        step = version
        gauges["step"].set(step)
    beats.stop()
    server.shutdown()
    if world > 1:
        dist.destroy_process_group()
    log.info("rank %d done at step %d", rank, step)
    return 0


if __name__ == "__main__":
    sys.exit(main())
