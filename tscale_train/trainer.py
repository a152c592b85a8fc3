"""`OnlineDPOTrainer`: SES makes chosen/rejected pairs with the current LoRA, Diffusion-DPO trains it.

Each round:
  1. every process searches its shard of the round's prompts (all searches batched together through
     the ask/tell object; the LoRA in eval mode, no grad),
  2. pairs are selected by reward and appended to the pair store (one shard per round and process),
  3. implicit accuracy is measured on the new pairs before training on them,
  4. a few DPO epochs over this round's pairs (plus an optional replay window) update the LoRA
     (DDP or DeepSpeed over the LoRA parameters; the reference is the same transformer with its
     adapters disabled),
  5. the round's metrics are logged, and the callbacks (`callbacks.py`) do the rest at their events:
     the LoRA's moving average, eval and the guards when due, checkpoints, the Hub push at the end.

Everything random is derived from (seed, round, index), so a run resumed from a checkpoint ends with
the same LoRA as an uninterrupted one.
"""

from __future__ import annotations

import math
import shutil
import time
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from rewards import short_reward_names

from .callbacks import CallbackHandler, TrainerCallback, TrainerControl, default_callbacks
from .checkpointing import CheckpointManager, ResumePoint, run_settings
from .config import OnlineDPOConfig
from .distributed import (
    check_shardable,
    derive_seed,
    global_mean,
    global_sum,
    make_accelerator,
    round_slots,
    shard_evenly,
    stop_with_launcher,
)
from .dpo import FlowDPOStep
from .evaluation import learning_summary, split_eval_prompts
from .generation import FlowGenerator, PromptEmbeds, generator_for_pipeline
from .io_utils import atomic_write, atomic_write_json, disk_full_error
from .loading import load_pipeline, load_reward_for
from .lora import LORA_WEIGHT_NAME, add_lora, save_lora
from .optimization import make_optimizer
from .pairs import PairRecord, PairStore, records_from_search
from .progress import library_bars, progress_bar, write
from .prompt_cache import PromptEmbeddingCache
from .prompts import BUNDLED_PROMPTS, load_prompts
from .quantization import quantize_text_encoder, quantize_transformer, text_encoder_names
from .run_dir import FINAL_STATE_NAME, METRICS_NAME, RunDirectory, read_metrics
from .ses.driver import search_prompts
from .ses.scoring import score_counts, unusable_scores_reason

# Re-exported: callers import these from here.
__all__ = ["OnlineDPOTrainer", "derive_seed", "learning_summary", "shard_evenly", "split_eval_prompts"]

RAW_GUARD_METRICS = ("guard/image_", "guard/diversity_distance")


class OnlineDPOTrainer:
    """Owns the loop; `train()` runs it. Use from `accelerate launch` or a plain Python process.

    `callbacks`: what the run does besides the algorithm (`callbacks.TrainerCallback`), called in order
    at every event; default `default_callbacks(config)`, the run the settings describe. A list replaces
    them: extend `default_callbacks(config)` to add one.
    """

    def __init__(
        self,
        config: OnlineDPOConfig,
        accelerator=None,
        callbacks: list[TrainerCallback] | None = None,
    ) -> None:
        self.config = config
        self.output_dir = Path(config.output_dir)
        # The settings were validated when `config` was made; what they name outside themselves (a local model
        # dir, a `module:callable` reward) is checked here too, for a config made in code, before any model loads.
        config.check_environment()
        # The prompts are read before any model loads.
        train_prompts = load_prompts(config.prompts or BUNDLED_PROMPTS, column=config.prompt_column)
        self.train_prompts, self.eval_prompts = split_eval_prompts(train_prompts, config)
        self.accelerator = accelerator or self._make_accelerator()
        check_shardable(len(self.train_prompts), config.prompts_per_round, self.accelerator.num_processes)
        self.callbacks = CallbackHandler(default_callbacks(config) if callbacks is None else callbacks)
        if config.push_to_hub and not any(callback.pushes_to_hub for callback in self.callbacks):
            # The loop knows nothing of the Hub: the push is a callback of the export layer.
            raise ValueError(
                "--push_to_hub is set but no callback pushes the run; build the trainer as `tscale train` does "
                "(tscale_train.cli.make_trainer), or add tscale_train.export.callback.PushToHubCallback to callbacks."
            )
        self.control = TrainerControl()
        # Before anything is loaded or written: this run owns the dir, which is fresh, resumed or overwritten.
        # A worker whose launcher (or main process) is killed stops instead of writing on alone.
        stop_with_launcher(self.accelerator)
        self.run_dir = RunDirectory(self.output_dir)
        self.run_dir.claim(config, self.accelerator)
        with self.run_dir.released_on_error():
            self.weight_dtype = self._weight_dtype()
            self.store = PairStore(self.output_dir / "pairs")
            # What each committed shard holds: recorded with every checkpoint, checked before pairs are reread.
            self.pair_manifest: dict[str, dict] = {}
            self.start_round = 0
            self.global_step = 0
            self._round_embeds: dict[str, PromptEmbeds] = {}
            self.checkpoints = CheckpointManager(
                self.accelerator,
                self.output_dir,
                settings=run_settings(config),
                total_limit=config.checkpoints_total_limit,
            )
            # The checkpoint, its files, the run's settings and the pair store are checked before any model loads.
            self.resume_point: ResumePoint | None = (
                self.checkpoints.choose(config.resume_from_checkpoint, self.store)
                if config.resume_from_checkpoint
                else None
            )
            # Loading bars (diffusers, transformers) only where ours are drawn: one terminal, one process.
            with library_bars(enabled=config.progress, main=self.accelerator.is_main_process):
                self._setup_models()
            self.callbacks.call("on_init_end", self, self.control)

    # ---- set-up ------------------------------------------------------------------------------
    def _make_accelerator(self):
        config = self.config
        return make_accelerator(self.output_dir, config.gradient_accumulation_steps, config.report_to)

    def _weight_dtype(self):
        """The pipeline's dtype: `--dtype`, except that DeepSpeed with bf16/fp16 mixed precision casts the
        transformer it wraps to that dtype, so `auto` follows it and any other dtype is refused (the VAE
        and text encoder would then disagree with the transformer's outputs)."""
        import torch

        config, accelerator = self.config, self.accelerator
        engine = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(str(accelerator.mixed_precision))
        if accelerator.state.deepspeed_plugin is None or engine is None:
            return config.torch_dtype(accelerator.device)
        if config.dtype == "auto":
            return engine
        if config.torch_dtype(accelerator.device) != engine:
            name = {torch.bfloat16: "bfloat16", torch.float16: "float16"}[engine]
            raise ValueError(
                f"--dtype {config.dtype}, but the DeepSpeed launch config trains in {accelerator.mixed_precision} mixed "
                f"precision, which casts the transformer to {name}; pass --dtype {name} (or auto), or launch with "
                "mixed_precision: 'no'"
            )
        return engine

    def _setup_models(self) -> None:
        from accelerate.utils import set_seed

        config, accelerator = self.config, self.accelerator
        if config.quantize_base != "none" and accelerator.state.deepspeed_plugin is not None:
            # DeepSpeed's engine casts the whole module to its precision, float8 weights included.
            raise ValueError(
                f"--quantize_base {config.quantize_base} does not run under DeepSpeed (its engine casts every "
                "weight back to its precision); launch with a DDP or single-GPU config, or --quantize_base none."
            )
        self.pipe = load_pipeline(config.model, dtype=self.weight_dtype)
        # A float8 base reaches the GPU only once stored in float8, after its LoRA is added (see below).
        quantized = config.quantize_base != "none"
        for name in text_encoder_names(self.pipe):
            quantize_text_encoder(getattr(self.pipe, name), config.quantize_base, self.weight_dtype)
        # The text encoder (8 GB for klein-4B) goes to the GPU only to encode, when offloaded.
        resident = ("vae",) if quantized else ("transformer", "vae")
        for name in resident if config.offload_text_encoder else (*resident, "text_encoder"):
            getattr(self.pipe, name).to(accelerator.device)
        self.pipe.set_progress_bar_config(disable=True)
        self.generator: FlowGenerator = generator_for_pipeline(
            self.pipe,
            height=config.height,
            width=config.width,
            guidance_scale=config.guidance_scale,
            eval_batch_size=config.eval_batch_size,
            preview_steps=config.preview_steps,
        )
        self.prompt_cache = PromptEmbeddingCache(
            self.generator,
            config.max_cached_prompts,
            device=accelerator.device,
            offload=config.offload_text_encoder,
        )
        # Eval prompts are used every eval: encode them once and keep them (max_eval_prompts of them).
        self.prompt_cache.pin(self.eval_prompts)
        reward_batch_size = config.reward_batch_size or config.eval_batch_size
        # Offloaded rewards wait on the CPU; search and eval move them to the GPU while they score.
        reward_device = "cpu" if config.offload_reward else accelerator.device
        self.reward = load_reward_for(
            config.reward, config.model, device=reward_device, batch_size=reward_batch_size
        )
        self.eval_reward = (
            load_reward_for(
                config.eval_reward, config.model, device=reward_device, batch_size=reward_batch_size
            )
            if config.eval_reward and config.eval_reward != config.reward
            else self.reward
        )
        # Held-out judges: scored at eval only, never for pairs.
        guard_names = config.guard_reward_names()
        self.guard_rewards = {
            short: load_reward_for(name, config.model, device=reward_device, batch_size=reward_batch_size)
            for short, name in zip(short_reward_names(guard_names), guard_names, strict=True)
        }
        # LoRA A matrices are drawn from the global RNG: seed it so every run (and process) starts alike.
        set_seed(config.seed)
        self.lora_parameters = add_lora(
            self.pipe.transformer,
            rank=config.lora_rank,
            alpha=config.lora_alpha,
            dropout=config.lora_dropout,
            target_modules=config.lora_target_modules,
            init=True if config.lora_init == "default" else config.lora_init,
            presets=self.generator.lora_targets,
        )
        if config.gradient_checkpointing:
            self.pipe.transformer.enable_gradient_checkpointing()
        if quantized:  # after the LoRA: peft's layers would otherwise be made in float8 too
            quantize_transformer(self.pipe.transformer, config.quantize_base, self.weight_dtype)
            self.pipe.transformer.to(accelerator.device)
            if accelerator.num_processes > 1:
                # DDP broadcasts every parameter from rank 0 at start-up, and gloo cannot send float8. The frozen
                # base is the same on every process (loaded from the same files), so only the LoRA is synced.
                from torch.nn.parallel import DistributedDataParallel

                DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
                    self.pipe.transformer,
                    [name for name, p in self.pipe.transformer.named_parameters() if not p.requires_grad],
                )
        optimizer, scheduler = make_optimizer(config, self.lora_parameters, accelerator.num_processes)
        if accelerator.state.deepspeed_plugin is not None:
            accelerator.state.deepspeed_plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = (
                config.train_batch_size
            )
        self.model, self.optimizer, self.lr_scheduler = accelerator.prepare(
            self.pipe.transformer, optimizer, scheduler
        )
        self.checkpoints.register_hooks(type(self.pipe), self.model)
        self.dpo_step = FlowDPOStep(
            model=self.model,
            unwrapped_model=self.unwrapped_transformer,
            lora_parameters=self.lora_parameters,
            predict_velocity=self.generator.predict_velocity,
            sampler_sigmas=self.generator.sampler_sigmas,
            preview_steps=self.generator.preview_steps,
            beta=config.beta,
            sigma_sampling=config.sigma_sampling,
            logit_mean=config.logit_mean,
            logit_std=config.logit_std,
            weight_dtype=self.weight_dtype,
            device=accelerator.device,
            autocast=accelerator.autocast,
        )

    @property
    def _show_progress(self) -> bool:
        return self.config.progress and self.accelerator.is_main_process

    @property
    def unwrapped_transformer(self):
        return self.accelerator.unwrap_model(self.model)

    @property
    def search(self) -> Callable:
        """The search that makes pairs and that eval runs: this module's `search_prompts` (one patch reaches both)."""
        return search_prompts

    # ---- checkpoints (see checkpointing.py) ----------------------------------------------------
    def save_checkpoint(self, round_index: int) -> Path:
        return self.checkpoints.save(round_index, self.global_step, pairs=self.pair_manifest)

    def resume(self) -> None:
        """Continue after the chosen checkpoint's round (`resume_point`); later rounds' pairs and metrics
        rows (all, without a checkpoint) are dropped."""
        point = self.resume_point
        resumed_round = None if point is None else point.round
        if point is not None:
            self.checkpoints.load(point)
            self.start_round = point.round + 1
            self.global_step = point.state["global_step"]
            # A checkpoint older than manifests: its rounds' shards are taken as they are now.
            self.pair_manifest = (
                point.pairs if point.pairs is not None else self.store.manifest(range(point.round + 1))
            )
        rows: list[dict] = []
        if self.accelerator.is_main_process:
            self.store.remove_rounds_after(-1 if resumed_round is None else resumed_round)
            self.run_dir.truncate_metrics(resumed_round)
            rows = read_metrics(self.output_dir / METRICS_NAME)
        if self.accelerator.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            rows = broadcast_object_list([rows], from_process=0)[0]  # every rank judges the guards alike
        self.accelerator.wait_for_everyone()
        self.callbacks.call("on_resume", self, self.control, rows, resumed_round)

    # ---- one round ---------------------------------------------------------------------------
    def round_prompts(self, round_index: int) -> tuple[list[str], list[int], list[int]]:
        """This process's prompts, their indices in `train_prompts` and their base-noise seeds for a round."""
        slots = round_slots(
            len(self.train_prompts), self.config.prompts_per_round, round_index, self.config.seed
        )
        local = shard_evenly(slots, self.accelerator.num_processes, self.accelerator.process_index)
        seeds = [derive_seed(self.config.seed, "noise", round_index, slot) % (2**31) for slot, _ in local]
        return [self.train_prompts[index] for _, index in local], [index for _, index in local], seeds

    @torch.no_grad()
    def make_pairs(self, round_index: int) -> tuple[list[PairRecord], dict[str, float]]:
        config = self.config
        prompts, prompt_indices, seeds = self.round_prompts(round_index)
        self.model.eval()
        # Encode first: the text encoder visits the GPU while the reward model is still off it.
        embeds = self._encode_round(prompts)
        self.reward.to(self.accelerator.device)
        results = self.search(
            self.generator,
            self.reward,
            prompts,
            seeds,
            budget=config.budget,
            config=config.ses_config(),
            preview_steps=config.preview_steps,
            embeds=embeds,
            keep_latents=True,
            preview_size=config.preview_size,
            group_size=config.search_group_size,
            progress=self._show_progress,
            method=config.search,
        )
        self.score_counts = score_counts(results)  # this process's; the no-pair error sums them
        if config.offload_reward:
            self.reward.to("cpu")
        records = [
            record
            for result, prompt_index in zip(results, prompt_indices, strict=True)
            for record in records_from_search(
                result,
                prompt_index,
                round_index,
                config.pairing,
                k=config.pairs_per_prompt,
                min_margin=config.min_margin,
            )
        ]
        with library_bars(enabled=False):  # datasets' "Saving the dataset" bar, every round on every process
            self.store.write_shard(records, round_index, self.accelerator.process_index)
        self._record_shards(round_index, len(records))
        finite = [result.search.scores[torch.isfinite(result.search.scores)] for result in results]
        accelerator = self.accelerator
        stats = {
            "search/best_reward": global_mean(accelerator, [result.search.best_score for result in results]),
            "search/base_reward": global_mean(accelerator, [result.search.base_score for result in results]),
            "search/mean_reward": global_mean(
                accelerator, [float(scores.mean()) for scores in finite if len(scores)]
            ),
            "train/reward_margin": global_mean(accelerator, [record.margin for record in records]),
            "train/num_pairs": global_sum(accelerator, len(records)),
        }
        return records, stats

    def _record_shards(self, round_index: int, rows: int) -> None:
        """Add every process's shard of this round (rows and checksum) to `pair_manifest`, on every process."""
        entries = [self.store.describe_shard(round_index, self.accelerator.process_index, rows)]
        if self.accelerator.num_processes > 1:
            from accelerate.utils import gather_object

            entries = gather_object(entries)
        for entry in entries:
            self.pair_manifest.update(entry)

    def _pair_tensors(
        self, records: list[PairRecord]
    ) -> tuple[torch.Tensor, torch.Tensor, list[PromptEmbeds]]:
        chosen = torch.stack([record.chosen_latents.float() for record in records])
        rejected = torch.stack([record.rejected_latents.float() for record in records])
        prompts = [record.prompt for record in records]
        # This round's prompts from the round's own embeddings; only replayed ones go through the cache.
        others = [prompt for prompt in dict.fromkeys(prompts) if prompt not in self._round_embeds]
        found = {**dict(zip(others, self.prompt_cache.get(others), strict=True)), **self._round_embeds}
        return chosen, rejected, [found[prompt] for prompt in prompts]

    def _encode_round(self, prompts: list[str]) -> list[PromptEmbeds]:
        """This round's shard, encoded in one visit of the text encoder and held until the next round.

        Held apart from the LRU cache so a shard larger than `max_cached_prompts` is not encoded
        twice in a round (search, then DPO); the cache serves replayed and eval prompts.
        """
        embeds = self.prompt_cache.get(prompts)
        self._round_embeds = dict(zip(prompts, embeds, strict=True))
        return embeds

    def reference_velocity(
        self, noisy: torch.Tensor, sigmas: torch.Tensor, embeds: list[PromptEmbeds]
    ) -> torch.Tensor:
        """Velocity of the reference (the transformer with its adapters disabled)."""
        return self.dpo_step.reference_velocity(noisy, sigmas, embeds)

    @torch.no_grad()
    def implicit_accuracy(self, records: list[PairRecord], round_index: int) -> float:
        """Share of pairs the LoRA already prefers the right way round, over all processes."""
        hits: list[float] = []
        if records:
            chosen, rejected, embeds = self._pair_tensors(records)
            generator = torch.Generator().manual_seed(
                derive_seed(self.config.seed, "acc", round_index, self.accelerator.process_index)
            )
            hits = self.dpo_step.implicit_accuracy(
                chosen, rejected, embeds, generator, self.config.train_batch_size
            )
        return global_mean(self.accelerator, hits)

    def _training_records(self, records: list[PairRecord], round_index: int) -> list[PairRecord]:
        """This round's pairs plus, with `replay_rounds`, this process's pairs of the last K rounds
        (read without their previews: the PNGs are never decoded)."""
        if self.config.replay_rounds <= 0:
            return records
        rounds = range(max(0, round_index - self.config.replay_rounds), round_index)
        process = self.accelerator.process_index
        self.store.verify(
            self.pair_manifest,
            rounds,
            process,
            advice=(
                "replay would train on other pairs than the run made: restore it, or resume from a checkpoint "
                "before its round (--resume_from_checkpoint checkpoints/checkpoint-NNNNN)"
            ),
        )
        return records + self.store.load_records(rounds, process=process)

    def train_on_pairs(self, records: list[PairRecord], round_index: int) -> dict[str, float]:
        config, accelerator = self.config, self.accelerator
        counts = [len(records)]
        if accelerator.num_processes > 1:
            from accelerate.utils import gather_object

            counts = gather_object(counts)
        if min(counts) == 0:
            # DDP needs every process to take the same steps; one process without pairs means no step.
            warnings.warn(
                f"round {round_index}: a process has no pairs (counts {counts}); skipping DPO this round.",
                stacklevel=2,
            )
            return {}
        micro_batches = math.ceil(max(counts) / config.train_batch_size)
        chosen, rejected, embeds = self._pair_tensors(records)
        self.model.train()
        totals: dict[str, float] = {}
        steps = 0
        bar = progress_bar(
            total=micro_batches * config.epochs_per_round,
            desc=f"DPO round {round_index}",
            unit="step",
            leave=False,
            enabled=self._show_progress,
            main=accelerator.is_main_process,
        )
        for epoch in range(config.epochs_per_round):
            generator = torch.Generator().manual_seed(
                derive_seed(config.seed, "dpo", round_index, epoch, accelerator.process_index)
            )
            order = torch.randperm(len(records), generator=generator)
            # Every process takes `micro_batches` steps; a shorter shard cycles through its pairs.
            order = order.repeat(math.ceil(micro_batches * config.train_batch_size / len(records)))
            for step in range(micro_batches):
                index = order[step * config.train_batch_size : (step + 1) * config.train_batch_size]
                with accelerator.accumulate(self.model):
                    loss, stats = self.dpo_step(
                        chosen[index], rejected[index], [embeds[i] for i in index.tolist()], generator
                    )
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and config.max_grad_norm > 0:
                        accelerator.clip_grad_norm_(self.lora_parameters, config.max_grad_norm)
                    self.optimizer.step()
                    self.lr_scheduler.step()
                    self.optimizer.zero_grad(set_to_none=True)
                if accelerator.sync_gradients:
                    self.global_step += 1
                    self.callbacks.call("on_step_end", self, self.control, round_index)
                loss = loss.detach()
                for name, value in {"loss": loss, **stats}.items():
                    totals[name] = totals.get(name, 0.0) + float(value)
                steps += 1
                bar.update()
                bar.set_postfix(loss=f"{loss.item():.4f}")
        bar.close()
        self.model.eval()
        means = {
            f"train/{name}": global_mean(self.accelerator, [total / steps]) for name, total in totals.items()
        }
        means["train/lr"] = self.lr_scheduler.get_last_lr()[0]
        return means

    def evaluate(self, round_index: int, with_search: bool) -> dict[str, float]:
        """Eval metrics of round `round_index` (-1: before training), measured and judged by the callbacks
        (`EvaluationCallback`, then `GuardCallback`: `guard/held` is 1.0 when every guard held) with the
        evaluated weights in the model (the LoRA's moving average, with `ema_decay`); {} without eval."""
        metrics: dict[str, float] = {}
        with self.evaluated_lora():
            self.callbacks.call("on_evaluate", self, self.control, round_index, metrics, with_search)
        return metrics

    # ---- the LoRA a run ends with ---------------------------------------------------------------
    def evaluated_lora(self) -> AbstractContextManager:
        """The weights that are evaluated, kept and exported in the model meanwhile: what the callbacks
        put there (the LoRA's moving average, with `ema_decay`), else the trained LoRA as it is."""
        return self.callbacks.evaluated_weights(self)

    def _save_final_lora(self) -> None:
        """`output_dir/pytorch_lora_weights.safetensors`: the trained LoRA (its average with EMA), or after a
        stop the LoRA the stopping callback kept (`control.final_lora`: the guards' last good one).
        `final_state.json`, written last, commits it with the rounds it was trained on and what the pair
        store held then (what export reads)."""
        control = self.control
        target = self.output_dir / LORA_WEIGHT_NAME
        # Until the new commit is written, the last committed round is the newest checkpoint's.
        (self.output_dir / FINAL_STATE_NAME).unlink(missing_ok=True)
        trained_round = self.config.rounds - 1 if control.stop_round is None else control.stop_round
        lora_round = trained_round
        kept = control.final_lora
        if kept is not None and kept.is_file():
            atomic_write(target, lambda temporary: shutil.copyfile(kept, temporary))
            lora_round = control.final_lora_round
        else:  # no stop, or the kept LoRA was lost to a resume from an older checkpoint (warned then)
            with disk_full_error(target), self.evaluated_lora():
                save_lora(type(self.pipe), self.unwrapped_transformer, self.output_dir)
        self.callbacks.call("on_final_save", self, control, lora_round)
        final = {
            "round": trained_round,
            "lora_round": lora_round,
            "global_step": self.global_step,
            "pairs": self.pair_manifest,
        }
        atomic_write_json(self.output_dir / FINAL_STATE_NAME, final)

    # ---- the loop ------------------------------------------------------------------------------
    def log(self, metrics: dict[str, float], round_index: int) -> None:
        metrics = {"round": round_index, "global_step": self.global_step, **metrics}
        self.accelerator.log(
            {key: value for key, value in metrics.items() if key != "round"}, step=round_index
        )
        if self.accelerator.is_main_process:
            self.run_dir.append_metrics(metrics)

    def log_images(self, images: dict[str, Image.Image], round_index: int) -> None:
        """Send images (the eval grid) to the trackers of `report_to` with the round as the step, as `log` sends
        the metrics: TensorBoard and Weights & Biases through accelerate's `log_images` (other trackers get none).
        Main process only: the trackers live there."""
        if not self.accelerator.is_main_process:
            return
        for tracker in self.accelerator.trackers:
            if tracker.name == "tensorboard":
                arrays = {name: np.asarray(image.convert("RGB"))[None] for name, image in images.items()}
                tracker.log_images(arrays, step=round_index, dataformats="NHWC")
            elif tracker.name == "wandb":  # accelerate wraps each in a `wandb.Image`
                tracker.log_images({name: [image] for name, image in images.items()}, step=round_index)

    def train(self, stop_after_rounds: int | None = None) -> Path:
        """Run the rounds (from the checkpoint if resuming); returns the output dir with the final LoRA.

        `stop_after_rounds` ends this call early after that many rounds, leaving a resumable run
        (for time-sliced jobs, and to test resuming).
        """
        with self.run_dir.held_for(self.accelerator):
            return self._train(stop_after_rounds)

    def _train(self, stop_after_rounds: int | None) -> Path:
        config, accelerator, control = self.config, self.accelerator, self.control
        if config.resume_from_checkpoint:
            self.resume()
        if accelerator.is_main_process:
            # Only now: a refused resume leaves the run's config as it was; a change is kept in its history.
            resumed_from = None if self.resume_point is None else self.resume_point.path.name
            self.run_dir.write_config(
                config.to_dict(), start_round=self.start_round, resumed_from=resumed_from
            )
            self.run_dir.write_pipeline_info(self.generator)
        if accelerator.is_main_process and config.report_to != "none":
            accelerator.init_trackers(
                config.tracker_project, config={k: v for k, v in config.to_dict().items() if v is not None}
            )
        # Evaluates the untrained model (round -1); a resumed run that a callback had stopped stays stopped.
        self.callbacks.call("on_train_begin", self, control)
        last_round = (
            config.rounds
            if stop_after_rounds is None
            else min(config.rounds, self.start_round + stop_after_rounds)
        )
        if control.should_stop:
            last_round = self.start_round
        for round_index in progress_bar(
            range(self.start_round, last_round),
            desc="rounds",
            unit="round",
            enabled=self._show_progress,
            main=accelerator.is_main_process,
        ):
            started = time.perf_counter()
            control.new_round()
            self.callbacks.call("on_round_begin", self, control, round_index)
            # 1-2. search this process's prompts with the current LoRA; the best and worst make pairs
            records, metrics = self.make_pairs(round_index)
            self._check_pairs(round_index, metrics)
            # 3. how many of them the LoRA already ranks right, before training on them
            metrics["train/implicit_acc_new"] = self.implicit_accuracy(records, round_index)
            # 4. DPO steps on them (and on replayed rounds' pairs)
            metrics.update(self.train_on_pairs(self._training_records(records, round_index), round_index))
            # 5. eval (and the guards' verdict) when due, the log line, a checkpoint when due
            if control.should_evaluate:
                metrics.update(self.evaluate(round_index, with_search=control.should_search))
            metrics["time/round_seconds"] = time.perf_counter() - started
            self.log(metrics, round_index)
            self._print_round(round_index, metrics)
            if control.should_save:
                self.save_checkpoint(round_index)
            self.callbacks.call("on_round_end", self, control, round_index, metrics)
            if control.should_stop:  # decided from gathered metrics: every rank stops together
                break
        control.run_finished = last_round == config.rounds or control.should_stop
        accelerator.wait_for_everyone()
        if accelerator.is_main_process and control.run_finished:
            self._save_final_lora()
            summary = learning_summary(
                self.output_dir / METRICS_NAME,
                final_round=control.final_lora_round if control.should_stop else None,
            )
            if summary:
                write(summary, main=True)
        self.callbacks.call("on_train_end", self, control)
        accelerator.wait_for_everyone()
        accelerator.end_training()
        return self.output_dir

    def _check_pairs(self, round_index: int, metrics: dict[str, float]) -> None:
        """A round without a single pair on any process cannot train: say why, with the reward's scores."""
        if metrics["train/num_pairs"] == 0:  # a global count, the same on every rank: all raise
            counts = {key: global_sum(self.accelerator, value) for key, value in self.score_counts.items()}
            raise ValueError(
                f"round {round_index}: the reward {self.config.reward!r} gave no usable pair on any process: "
                f"{unusable_scores_reason(counts, self.config.min_margin)}; check the reward"
            )

    def _print_round(self, round_index: int, metrics: dict[str, float]) -> None:
        """One line per round on the main process; the guards' raw image statistics stay in metrics.jsonl."""
        if not self.accelerator.is_main_process:
            return
        shown = {
            k: v for k, v in metrics.items() if isinstance(v, float) and not k.startswith(RAW_GUARD_METRICS)
        }
        summary = " ".join(f"{k.split('/')[-1]}={v:.4g}" for k, v in shown.items())
        write(f"round {round_index}: {summary}", main=True)
