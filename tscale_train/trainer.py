"""`OnlineDPOTrainer`: SES makes chosen/rejected pairs with the current LoRA, Diffusion-DPO trains it.

Each round:
  1. every process searches its shard of the round's prompts (all searches batched together through
     the ask/tell object; the LoRA in eval mode, no grad),
  2. pairs are selected by reward and appended to the pair store (one shard per round and process),
  3. implicit accuracy is measured on the new pairs before training on them,
  4. a few DPO epochs over this round's pairs (plus an optional replay window) update the LoRA
     (DDP or DeepSpeed over the LoRA parameters; the reference is the same transformer with its
     adapters disabled),
  5. eval and checkpoints when due.

Everything random is derived from (seed, round, index), so a run resumed from a checkpoint ends with
the same LoRA as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import time
import warnings
from pathlib import Path

import torch
import yaml
from tqdm.auto import tqdm

from rewards import check_reward_name
from search import SESConfig

from .config import OnlineDPOConfig
from .distributed import (
    check_gradient_accumulation,
    pin_gradient_accumulation,
    process_group_kwargs,
    run_on_cpu,
)
from .dpo import flow_dpo_loss, interpolate_flow, sample_sigmas
from .generation import FlowGenerator, PromptEmbeds, generator_for_pipeline
from .io_utils import atomic_save_image, atomic_write_json, atomic_write_text
from .loading import check_model_source, load_pipeline, load_reward_for, parse_dtype
from .lora import LORA_WEIGHT_NAME, add_lora, save_lora
from .pairs import PairStore, select_pairs
from .prompt_cache import PromptEmbeddingCache
from .prompts import load_prompts
from .ses import search_prompts, to_pil

logger = logging.getLogger(__name__)

BUNDLED_PROMPTS = Path(__file__).parent / "data" / "prompts.txt"
CHECKPOINT_PREFIX = "checkpoint-"
TRAINER_STATE = "trainer_state.json"
# Settings a checkpoint must agree on to be resumed: the weights it holds only make sense for them.
_CHECKPOINT_IDENTITY = ("model", "lora_rank", "lora_alpha", "lora_target_modules")


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from any parts; the same parts give the same seed on every machine."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def split_eval_prompts(prompts: list[str], config: OnlineDPOConfig) -> tuple[list[str], list[str]]:
    """Train/held-out split: `eval_prompts` if given, else a seeded `eval_fraction` of `prompts`."""
    if config.eval_prompts:
        return prompts, load_prompts(config.eval_prompts, column=config.prompt_column)[: config.max_eval_prompts]
    count = min(config.max_eval_prompts, int(round(len(prompts) * config.eval_fraction)))
    if count == 0 or len(prompts) - count < 1:
        return prompts, []
    order = torch.randperm(len(prompts), generator=torch.Generator().manual_seed(derive_seed(config.seed, "eval-split")))
    held_out = set(order[:count].tolist())
    return [p for i, p in enumerate(prompts) if i not in held_out], [prompts[i] for i in sorted(held_out)]


def shard_evenly(items: list, num_processes: int, process_index: int) -> list:
    """This process's contiguous shard; every process gets the same count (the list is padded by repetition)."""
    per_process = math.ceil(len(items) / num_processes)
    padded = [items[i % len(items)] for i in range(per_process * num_processes)]
    return padded[process_index * per_process : (process_index + 1) * per_process]


def learning_summary(metrics_path: Path) -> str | None:
    """One line: budget-0 eval reward before -> after training, and what the search gained before training.

    Shifts are in units of the eval prompts' spread before training (round -1), so rewards of any
    scale read alike. None when the run has no eval before and after training.
    """
    if not metrics_path.is_file():
        return None
    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    evals = [row for row in rows if "eval/reward_budget0" in row]
    before = next((row for row in evals if row["round"] == -1), None)
    if before is None or len(evals) < 2:
        return None
    after = evals[-1]
    spread = before.get("eval/reward_budget0_std") or float("nan")

    def shift(value: float) -> str:
        return f"{(value - before['eval/reward_budget0']) / spread:+.1f} sd"

    line = (
        f"learning: eval reward at budget 0 {before['eval/reward_budget0']:.4f} -> {after['eval/reward_budget0']:.4f} "
        f"({shift(after['eval/reward_budget0'])}) after {after['round'] + 1} rounds"
    )
    if "eval/reward_ses" in before:
        line += f"; before training, SES reached {before['eval/reward_ses']:.4f} ({shift(before['eval/reward_ses'])})"
    return line


class OnlineDPOTrainer:
    """Owns the loop; `train()` runs it. Use from `accelerate launch` or a plain Python process."""

    def __init__(self, config: OnlineDPOConfig, accelerator=None) -> None:
        self.config = config
        self.output_dir = Path(config.output_dir)
        # Cheap checks first: bad input fails before any model is loaded.
        check_model_source(config.model)
        for reward_name in (config.reward, config.eval_reward):
            if reward_name:
                check_reward_name(reward_name)
        train_prompts = load_prompts(config.prompts or BUNDLED_PROMPTS, column=config.prompt_column)
        self.train_prompts, self.eval_prompts = split_eval_prompts(train_prompts, config)
        self.accelerator = accelerator or self._make_accelerator()
        num_processes = self.accelerator.num_processes
        if len(self.train_prompts) < num_processes:
            raise ValueError(
                f"{len(self.train_prompts)} training prompts for {num_processes} processes; "
                "give at least one prompt per process."
            )
        if config.prompts_per_round < num_processes:
            # Shards are padded by repetition: with fewer prompts than processes, ranks would search
            # and train on identical pairs, wasting the extra processes and double-counting the pairs.
            raise ValueError(
                f"prompts_per_round={config.prompts_per_round} is smaller than the {num_processes} processes; "
                f"set --prompts_per_round to at least {num_processes} (a multiple of it is best)."
            )
        self.weight_dtype = parse_dtype(config.dtype)
        self.store = PairStore(self.output_dir / "pairs")
        self.start_round = 0
        self.global_step = 0
        self._round_embeds: dict[str, PromptEmbeds] = {}
        self._setup_models()

    # ---- set-up ------------------------------------------------------------------------------
    def _make_accelerator(self):
        from accelerate import Accelerator
        from accelerate.utils import ProjectConfiguration

        steps = self.config.gradient_accumulation_steps
        pin_gradient_accumulation(steps)
        report_to = None if self.config.report_to == "none" else self.config.report_to
        accelerator = Accelerator(
            cpu=run_on_cpu(),
            gradient_accumulation_steps=steps,
            log_with=report_to,
            project_config=ProjectConfiguration(project_dir=str(self.output_dir), logging_dir=str(self.output_dir / "logs")),
            kwargs_handlers=process_group_kwargs(),
        )
        check_gradient_accumulation(accelerator, steps)
        return accelerator

    def _setup_models(self) -> None:
        from accelerate.utils import set_seed
        from diffusers.optimization import get_scheduler

        config, accelerator = self.config, self.accelerator
        self.pipe = load_pipeline(config.model, dtype=self.weight_dtype)
        # The text encoder (8 GB for klein-4B) goes to the GPU only to encode, when offloaded.
        for name in ("transformer", "vae") if config.offload_text_encoder else ("transformer", "vae", "text_encoder"):
            getattr(self.pipe, name).to(accelerator.device)
        self.pipe.set_progress_bar_config(disable=True)
        self.generator: FlowGenerator = generator_for_pipeline(
            self.pipe,
            height=config.height,
            width=config.width,
            guidance_scale=config.guidance_scale,
            eval_batch_size=config.eval_batch_size,
        )
        self.prompt_cache = PromptEmbeddingCache(
            self.generator, config.max_cached_prompts, device=accelerator.device, offload=config.offload_text_encoder
        )
        # Eval prompts are used every eval: encode them once and keep them (max_eval_prompts of them).
        self.prompt_cache.pin(self.eval_prompts)
        reward_batch_size = config.reward_batch_size or config.eval_batch_size
        # Offloaded rewards wait on the CPU; search and eval move them to the GPU while they score.
        reward_device = "cpu" if config.offload_reward else accelerator.device
        self.reward = load_reward_for(config.reward, config.model, device=reward_device, batch_size=reward_batch_size)
        self.eval_reward = (
            load_reward_for(config.eval_reward, config.model, device=reward_device, batch_size=reward_batch_size)
            if config.eval_reward and config.eval_reward != config.reward
            else self.reward
        )
        # LoRA A matrices are drawn from the global RNG: seed it so every run (and process) starts alike.
        set_seed(config.seed)
        self.lora_parameters = add_lora(
            self.pipe.transformer,
            rank=config.lora_rank,
            alpha=config.lora_alpha,
            dropout=config.lora_dropout,
            target_modules=config.lora_target_modules,
            init=True if config.lora_init == "default" else config.lora_init,
        )
        if config.gradient_checkpointing:
            self.pipe.transformer.enable_gradient_checkpointing()
        optimizer = torch.optim.AdamW(
            self.lora_parameters, lr=config.learning_rate, weight_decay=config.adam_weight_decay
        )
        steps_per_round = config.epochs_per_round * math.ceil(
            config.prompts_per_round * config.pairs_per_prompt
            / (config.train_batch_size * config.gradient_accumulation_steps * accelerator.num_processes)
        )
        # accelerate steps a prepared scheduler once per process, hence the factor (as diffusers' scripts do).
        scheduler = get_scheduler(
            config.lr_scheduler,
            optimizer=optimizer,
            num_warmup_steps=config.lr_warmup_steps * accelerator.num_processes,
            num_training_steps=max(1, steps_per_round * config.rounds) * accelerator.num_processes,
        )
        if accelerator.state.deepspeed_plugin is not None:
            accelerator.state.deepspeed_plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = config.train_batch_size
        self.model, self.optimizer, self.lr_scheduler = accelerator.prepare(self.pipe.transformer, optimizer, scheduler)
        self._register_checkpoint_hooks()

    @property
    def _show_progress(self) -> bool:
        return self.config.progress and self.accelerator.is_main_process

    @property
    def _uses_deepspeed(self) -> bool:
        from accelerate.utils import DistributedType

        return self.accelerator.distributed_type == DistributedType.DEEPSPEED

    @property
    def unwrapped_transformer(self):
        return self.accelerator.unwrap_model(self.model)

    # ---- checkpoints ---------------------------------------------------------------------------
    def _register_checkpoint_hooks(self) -> None:
        """accelerate's save/load_state keep only the LoRA (diffusers format), not the frozen base model."""
        from peft.utils import set_peft_model_state_dict
        from safetensors.torch import load_file

        if self._uses_deepspeed:
            return  # DeepSpeed writes its own engine checkpoint (trainable parameters + partitioned optimizer).
        pipeline_class = type(self.pipe)

        def save_hook(models, weights, output_dir):
            if self.accelerator.is_main_process:
                for model in models:
                    save_lora(pipeline_class, self.accelerator.unwrap_model(model), output_dir)
            weights.clear()

        def load_hook(models, input_dir):
            state = load_file(str(Path(input_dir) / LORA_WEIGHT_NAME))
            state = {key.removeprefix("transformer."): value for key, value in state.items()}
            while models:
                model = self.accelerator.unwrap_model(models.pop())
                result = set_peft_model_state_dict(model, state, adapter_name="default")
                if getattr(result, "unexpected_keys", None):
                    raise ValueError(f"checkpoint {input_dir} holds LoRA keys this model lacks: {result.unexpected_keys[:3]}...")

        self.accelerator.register_save_state_pre_hook(save_hook)
        self.accelerator.register_load_state_pre_hook(load_hook)

    def _checkpoint_dirs(self) -> list[Path]:
        root = self.output_dir / "checkpoints"
        found = [path for path in root.glob(f"{CHECKPOINT_PREFIX}*") if (path / TRAINER_STATE).is_file()]
        return sorted(found, key=lambda path: int(path.name.removeprefix(CHECKPOINT_PREFIX)))

    def save_checkpoint(self, round_index: int) -> Path:
        path = self.output_dir / "checkpoints" / f"{CHECKPOINT_PREFIX}{round_index:05d}"
        self.accelerator.wait_for_everyone()
        if self._uses_deepspeed:
            # Only the LoRA and its optimizer state: the frozen 7.2 GB transformer is the base model's.
            self.accelerator.save_state(str(path), exclude_frozen_parameters=True)
        else:
            self.accelerator.save_state(str(path))
        if self.accelerator.is_main_process:
            identity = {name: getattr(self.config, name) for name in _CHECKPOINT_IDENTITY}
            # Written last: a checkpoint without it is incomplete and never resumed from.
            atomic_write_json(path / TRAINER_STATE, {"round": round_index, "global_step": self.global_step, **identity})
            limit = self.config.checkpoints_total_limit
            if limit:
                for stale in self._checkpoint_dirs()[:-limit]:
                    shutil.rmtree(stale, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        return path

    def resume(self, checkpoint: str) -> None:
        if checkpoint == "latest":
            found = self._checkpoint_dirs()
            if not found:
                logger.warning("resume_from_checkpoint=latest but %s has no checkpoint; starting fresh.", self.output_dir)
                return
            path = found[-1]
        else:
            path = Path(checkpoint)
        state_file = path / TRAINER_STATE
        if not state_file.is_file():
            raise FileNotFoundError(f"{str(path)!r} is not a complete checkpoint (no {TRAINER_STATE}); pass 'latest' or a checkpoint-NNNNN dir.")
        state = json.loads(state_file.read_text())
        mismatched = {
            name: (state.get(name), getattr(self.config, name))
            for name in _CHECKPOINT_IDENTITY
            if state.get(name) != getattr(self.config, name)
        }
        if mismatched:
            detail = ", ".join(f"{name}: checkpoint {old!r} vs config {new!r}" for name, (old, new) in mismatched.items())
            raise ValueError(f"checkpoint {str(path)!r} was made with another model or LoRA config ({detail}); resume with the same settings.")
        if self._uses_deepspeed:
            # The checkpoint holds the trainable (LoRA) parameters only; the frozen ones come from the base model.
            self.accelerator.load_state(str(path), load_module_strict=False)
        else:
            self.accelerator.load_state(str(path))
        self.start_round = state["round"] + 1
        self.global_step = state["global_step"]
        if self.accelerator.is_main_process:
            self.store.remove_rounds_after(state["round"])
        self.accelerator.wait_for_everyone()

    # ---- one round ---------------------------------------------------------------------------
    def round_prompts(self, round_index: int) -> tuple[list[str], list[int]]:
        """This process's prompts and base-noise seeds for a round (same count on every process)."""
        config, total = self.config, self.config.prompts_per_round
        order: list[int] = []
        epoch = (round_index * total) // len(self.train_prompts)
        while len(order) < (round_index * total) % len(self.train_prompts) + total:
            generator = torch.Generator().manual_seed(derive_seed(config.seed, "prompt-order", epoch))
            order += torch.randperm(len(self.train_prompts), generator=generator).tolist()
            epoch += 1
        start = (round_index * total) % len(self.train_prompts)
        slots = [(slot, order[start + slot]) for slot in range(total)]
        local = shard_evenly(slots, self.accelerator.num_processes, self.accelerator.process_index)
        prompts = [self.train_prompts[index] for _, index in local]
        seeds = [derive_seed(config.seed, "noise", round_index, slot) % (2**31) for slot, _ in local]
        return prompts, seeds

    def search_config(self) -> SESConfig:
        config = self.config
        return SESConfig(wavelet=config.wavelet, level=config.level, popsize=config.popsize, k_elites=config.k_elites)

    @torch.no_grad()
    def make_pairs(self, round_index: int) -> tuple[list[dict], dict[str, float]]:
        config = self.config
        prompts, seeds = self.round_prompts(round_index)
        self.model.eval()
        # Encode first: the text encoder visits the GPU while the reward model is still off it.
        embeds = self._encode_round(prompts)
        self.reward.to(self.accelerator.device)
        results = search_prompts(
            self.generator,
            self.reward,
            prompts,
            seeds,
            budget=config.budget,
            config=self.search_config(),
            preview_steps=config.preview_steps,
            embeds=embeds,
            keep_latents=True,
            preview_size=config.preview_size,
            group_size=config.search_group_size,
            progress=self._show_progress,
        )
        if config.offload_reward:
            self.reward.to("cpu")
        records = []
        for result in results:
            for pair in select_pairs(result.search.scores, config.pairing, k=config.pairs_per_prompt, min_margin=config.min_margin):
                previews = to_pil(result.previews[[pair.chosen_index, pair.rejected_index]].float() / 255)
                records.append(
                    {
                        "prompt": result.prompt,
                        "prompt_index": self.train_prompts.index(result.prompt),
                        "round": round_index,
                        "seed": result.seed,
                        "strategy": config.pairing,
                        "chosen_index": pair.chosen_index,
                        "rejected_index": pair.rejected_index,
                        "chosen_score": float(result.search.scores[pair.chosen_index]),
                        "rejected_score": float(result.search.scores[pair.rejected_index]),
                        "chosen_latents": result.clean_latents[pair.chosen_index],
                        "rejected_latents": result.clean_latents[pair.rejected_index],
                        "chosen_image": previews[0],
                        "rejected_image": previews[1],
                    }
                )
        self.store.write_shard(records, round_index, self.accelerator.process_index)
        finite = [result.search.scores[torch.isfinite(result.search.scores)] for result in results]
        stats = {
            "search/best_reward": self._global_mean([result.search.best_score for result in results]),
            "search/base_reward": self._global_mean([float(result.search.scores[0]) for result in results]),
            "search/mean_reward": self._global_mean([float(scores.mean()) for scores in finite if len(scores)]),
            "train/reward_margin": self._global_mean([r["chosen_score"] - r["rejected_score"] for r in records]),
            "train/num_pairs": self._global_sum(len(records)),
        }
        return records, stats

    def _global_mean(self, values: list[float]) -> float:
        from accelerate.utils import gather_object

        everything = gather_object(list(values)) if self.accelerator.num_processes > 1 else list(values)
        return float(sum(everything) / len(everything)) if everything else float("nan")

    def _global_sum(self, value: float) -> float:
        from accelerate.utils import gather_object

        return float(sum(gather_object([value]))) if self.accelerator.num_processes > 1 else float(value)

    def _pair_tensors(self, records: list[dict]) -> tuple[torch.Tensor, torch.Tensor, list[PromptEmbeds]]:
        chosen = torch.stack([torch.as_tensor(record["chosen_latents"]).float() for record in records])
        rejected = torch.stack([torch.as_tensor(record["rejected_latents"]).float() for record in records])
        prompts = [record["prompt"] for record in records]
        if all(prompt in self._round_embeds for prompt in prompts):
            return chosen, rejected, [self._round_embeds[prompt] for prompt in prompts]
        return chosen, rejected, self.prompt_cache.get(prompts)

    def _encode_round(self, prompts: list[str]) -> list[PromptEmbeds]:
        """This round's shard, encoded in one visit of the text encoder and held until the next round.

        Held apart from the LRU cache so a shard larger than `max_cached_prompts` is not encoded
        twice in a round (search, then DPO); the cache serves replayed and eval prompts.
        """
        embeds = self.prompt_cache.get(prompts)
        self._round_embeds = dict(zip(prompts, embeds, strict=True))
        return embeds

    def _dpo_forward(self, chosen, rejected, embeds, generator: torch.Generator):
        """Loss and stats for one micro-batch: one noise and sigma shared by each pair."""
        device = self.accelerator.device
        batch = chosen.shape[0]
        noise = torch.randn(chosen.shape, generator=generator)
        sigmas = sample_sigmas(
            batch,
            self.config.sigma_sampling,
            generator=generator,
            sampler_sigmas=self.generator.sampler_sigmas(self.config.preview_steps),
            logit_mean=self.config.logit_mean,
            logit_std=self.config.logit_std,
        )
        noisy_w, target_w = interpolate_flow(chosen, noise, sigmas)
        noisy_l, target_l = interpolate_flow(rejected, noise, sigmas)
        noisy = torch.cat([noisy_w, noisy_l]).to(device, self.weight_dtype)
        both_sigmas = torch.cat([sigmas, sigmas]).to(device)
        both_embeds = list(embeds) * 2
        reference = self.reference_velocity(noisy, both_sigmas, both_embeds)
        with self.accelerator.autocast():
            prediction = self.generator.predict_velocity(self.model, noisy, both_sigmas, both_embeds)
        return flow_dpo_loss(
            prediction[:batch],
            prediction[batch:],
            reference[:batch],
            reference[batch:],
            target_w.to(device),
            target_l.to(device),
            beta=self.config.beta,
        )

    @torch.no_grad()
    def reference_velocity(self, noisy, sigmas, embeds) -> torch.Tensor:
        """The reference model: the same transformer with its adapters disabled (no second copy)."""
        transformer = self.unwrapped_transformer
        transformer.disable_adapters()
        try:
            with self.accelerator.autocast():
                return self.generator.predict_velocity(transformer, noisy, sigmas, embeds)
        finally:
            transformer.enable_adapters()
            # peft's enable/disable toggles requires_grad of adapter weights; keep only LoRA trainable.
            for parameter in self.lora_parameters:
                parameter.requires_grad_(True)

    @torch.no_grad()
    def implicit_accuracy(self, records: list[dict], round_index: int) -> float:
        if not records:
            return self._global_mean([])
        self.model.eval()
        chosen, rejected, embeds = self._pair_tensors(records)
        generator = torch.Generator().manual_seed(derive_seed(self.config.seed, "acc", round_index, self.accelerator.process_index))
        hits = []
        for start in range(0, len(records), self.config.train_batch_size):
            stop = start + self.config.train_batch_size
            _, stats = self._dpo_forward(chosen[start:stop], rejected[start:stop], embeds[start:stop], generator)
            hits += [float(stats["implicit_acc"])] * (min(stop, len(records)) - start)
        return self._global_mean(hits)

    def _training_records(self, records: list[dict], round_index: int) -> list[dict]:
        """This round's pairs plus, with `replay_rounds`, this process's pairs of the last K rounds.

        Replayed shards are read in numpy format and only the columns training needs: no Python
        lists of floats, and the preview PNGs are never decoded.
        """
        if self.config.replay_rounds <= 0:
            return records
        import datasets

        from .pairs import record_latents

        suffix = f"process_{self.accelerator.process_index:05d}"
        rounds = range(max(0, round_index - self.config.replay_rounds), round_index)
        columns = ["prompt", "latent_shape", "chosen_latents", "rejected_latents"]
        replay = []
        for path in self.store.shard_paths(rounds):
            if path.name != suffix:
                continue
            shard = datasets.load_from_disk(str(path)).select_columns(columns).with_format("numpy")
            for row in shard:
                chosen, rejected = record_latents(row)
                replay.append({"prompt": str(row["prompt"]), "chosen_latents": chosen, "rejected_latents": rejected})
        return records + replay

    def train_on_pairs(self, records: list[dict], round_index: int) -> dict[str, float]:
        config, accelerator = self.config, self.accelerator
        counts = [len(records)]
        if accelerator.num_processes > 1:
            from accelerate.utils import gather_object

            counts = gather_object(counts)
        if min(counts) == 0:
            # DDP needs every process to take the same steps; one process without pairs means no step.
            warnings.warn(f"round {round_index}: a process has no pairs (counts {counts}); skipping DPO this round.", stacklevel=2)
            return {}
        micro_batches = math.ceil(max(counts) / config.train_batch_size)
        chosen, rejected, embeds = self._pair_tensors(records)
        self.model.train()
        totals: dict[str, float] = {}
        steps = 0
        bar = tqdm(total=micro_batches * config.epochs_per_round, desc=f"DPO round {round_index}", disable=not self._show_progress, leave=False)
        for epoch in range(config.epochs_per_round):
            generator = torch.Generator().manual_seed(derive_seed(config.seed, "dpo", round_index, epoch, accelerator.process_index))
            order = torch.randperm(len(records), generator=generator)
            # Every process takes `micro_batches` steps; a shorter shard cycles through its pairs.
            order = order.repeat(math.ceil(micro_batches * config.train_batch_size / len(records)))
            for step in range(micro_batches):
                index = order[step * config.train_batch_size : (step + 1) * config.train_batch_size]
                with accelerator.accumulate(self.model):
                    loss, stats = self._dpo_forward(chosen[index], rejected[index], [embeds[i] for i in index.tolist()], generator)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and config.max_grad_norm > 0:
                        accelerator.clip_grad_norm_(self.lora_parameters, config.max_grad_norm)
                    self.optimizer.step()
                    self.lr_scheduler.step()
                    self.optimizer.zero_grad(set_to_none=True)
                if accelerator.sync_gradients:
                    self.global_step += 1
                loss = loss.detach()
                for name, value in {"loss": loss, **stats}.items():
                    totals[name] = totals.get(name, 0.0) + float(value)
                steps += 1
                bar.update()
                bar.set_postfix(loss=f"{loss.item():.4f}")
        bar.close()
        self.model.eval()
        means = {f"train/{name}": self._global_mean([total / steps]) for name, total in totals.items()}
        means["train/lr"] = self.lr_scheduler.get_last_lr()[0]
        return means

    # ---- eval ----------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, round_index: int, with_search: bool) -> dict[str, float]:
        """Mean reward on held-out prompts with fixed seeds: at budget 0 (the LoRA alone) and after SES.

        Both are scored at the search's preview steps, so `eval/reward_ses - eval/reward_budget0` is
        what the search adds (for a base model, 12-step previews against 50-step images would not be).
        """
        if not self.eval_prompts:
            return {}
        config, accelerator = self.config, self.accelerator
        slots = list(enumerate(self.eval_prompts))
        local = shard_evenly(slots, accelerator.num_processes, accelerator.process_index)
        prompts = [prompt for _, prompt in local]
        seeds = [derive_seed(config.seed, "eval", slot) % (2**31) for slot, _ in local]
        steps = config.preview_steps or self.generator.num_inference_steps
        self.model.eval()
        self.eval_reward.to(accelerator.device)
        noises = torch.cat([self.generator.initial_noise(seed) for seed in seeds])
        embeds = self.prompt_cache.get(prompts)
        budget0, grid_images = self._score_and_keep_grid(noises, embeds, prompts, steps)
        # Padding repeats slots; gather (slot, score) and keep each slot once.
        scored = self._gather_by_slot([slot for slot, _ in local], budget0.tolist())
        metrics = {
            "eval/reward_budget0": float(torch.tensor(scored).mean()),
            "eval/reward_budget0_std": float(torch.tensor(scored).std()) if len(scored) > 1 else 0.0,
        }
        if with_search:
            results = search_prompts(
                self.generator,
                self.eval_reward,
                prompts,
                seeds,
                budget=config.eval_budget or config.budget,
                config=self.search_config(),
                preview_steps=config.preview_steps,
                embeds=embeds,
                group_size=config.search_group_size,
                progress=False,
            )
            searched = self._gather_by_slot([slot for slot, _ in local], [result.search.best_score for result in results])
            metrics["eval/reward_ses"] = float(torch.tensor(searched).mean())
            if accelerator.is_main_process:
                count = grid_images.shape[0]
                best = torch.cat([result.search.best_noise.float().cpu() for result in results[:count]])
                _, ses_images = self._score_and_keep_grid(best, embeds[:count], None, steps)
                self._save_eval_grid(round_index, grid_images, ses_images)
        if config.offload_reward:
            self.eval_reward.to("cpu")
        return metrics

    def _score_and_keep_grid(self, noises, embeds, prompts, steps, grid_count: int = 8):
        """Scores (when `prompts` is given) batch by batch, and the first `grid_count` images on the CPU."""
        scores, kept = [], []
        for batch, output in self.generator.iter_batches(noises, embeds, steps):
            if prompts is not None:
                scores.append(self.eval_reward(output.images, prompts[batch]).float().cpu())
            if sum(len(images) for images in kept) < grid_count:
                kept.append(output.images.float().cpu())
        grid = torch.cat(kept)[:grid_count]
        return (torch.cat(scores) if scores else torch.empty(0)), grid

    def _gather_by_slot(self, slots: list[int], values: list[float]) -> list[float]:
        from accelerate.utils import gather_object

        pairs = list(zip(slots, values, strict=False))
        if self.accelerator.num_processes > 1:
            pairs = gather_object(pairs)
        return [value for _, value in sorted(dict(pairs).items())]

    def _save_eval_grid(self, round_index: int, budget0_images: torch.Tensor, ses_images: torch.Tensor) -> None:
        from torchvision.utils import make_grid

        count = min(budget0_images.shape[0], ses_images.shape[0])
        grid = make_grid(torch.cat([budget0_images[:count], ses_images[:count]]).float(), nrow=count, padding=2)
        image = to_pil(grid[None])[0]
        atomic_save_image(image, self.output_dir / "eval" / f"round_{round_index:05d}.png")
        for tracker in self.accelerator.trackers:
            if tracker.name == "tensorboard":
                tracker.writer.add_image("eval/budget0_vs_ses", grid.clamp(0, 1), round_index)
            elif tracker.name == "wandb":
                import wandb

                tracker.log({"eval/budget0_vs_ses": wandb.Image(image, caption="top: budget 0, bottom: SES")}, step=round_index)

    # ---- the loop ------------------------------------------------------------------------------
    def log(self, metrics: dict[str, float], round_index: int) -> None:
        metrics = {"round": round_index, "global_step": self.global_step, **metrics}
        self.accelerator.log({key: value for key, value in metrics.items() if key != "round"}, step=round_index)
        if self.accelerator.is_main_process:
            with (self.output_dir / "metrics.jsonl").open("a") as handle:
                handle.write(json.dumps(metrics) + "\n")

    def _due(self, every: int, round_index: int) -> bool:
        return every > 0 and (round_index + 1) % every == 0

    def train(self, stop_after_rounds: int | None = None) -> Path:
        """Run the rounds (from the checkpoint if resuming); returns the output dir with the final LoRA.

        `stop_after_rounds` ends this call early after that many rounds, leaving a resumable run
        (for time-sliced jobs, and to test resuming).
        """
        config, accelerator = self.config, self.accelerator
        if accelerator.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.output_dir / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))
        if config.resume_from_checkpoint:
            self.resume(config.resume_from_checkpoint)
        if accelerator.is_main_process and config.report_to != "none":
            accelerator.init_trackers(config.tracker_project, config={k: v for k, v in config.to_dict().items() if v is not None})
        if self.start_round == 0 and config.eval_every > 0:
            self.log(self.evaluate(-1, with_search=config.eval_ses_every > 0), -1)
        last_round = config.rounds if stop_after_rounds is None else min(config.rounds, self.start_round + stop_after_rounds)
        for round_index in tqdm(range(self.start_round, last_round), desc="rounds", disable=not self._show_progress):
            started = time.perf_counter()
            records, metrics = self.make_pairs(round_index)
            metrics["train/implicit_acc_new"] = self.implicit_accuracy(records, round_index)
            metrics.update(self.train_on_pairs(self._training_records(records, round_index), round_index))
            final_round = round_index == config.rounds - 1
            if self._due(config.eval_every, round_index) or final_round:
                with_search = self._due(config.eval_ses_every, round_index) or final_round
                metrics.update(self.evaluate(round_index, with_search=with_search))
            metrics["time/round_seconds"] = time.perf_counter() - started
            self.log(metrics, round_index)
            if accelerator.is_main_process:
                summary = " ".join(f"{k.split('/')[-1]}={v:.4g}" for k, v in metrics.items() if isinstance(v, float))
                tqdm.write(f"round {round_index}: {summary}")
            if self._due(config.checkpoint_every, round_index) or final_round:
                self.save_checkpoint(round_index)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process and last_round == config.rounds:
            save_lora(type(self.pipe), self.unwrapped_transformer, self.output_dir)
            summary = learning_summary(self.output_dir / "metrics.jsonl")
            if summary:
                tqdm.write(summary)
        accelerator.wait_for_everyone()
        accelerator.end_training()
        return self.output_dir
