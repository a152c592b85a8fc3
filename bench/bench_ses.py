"""SES inference on the tiny model: candidates/s batched vs one at a time, and where the time goes.

Prints a markdown table. Usage: python bench/bench_ses.py [--budget 50] [--repeats 3]
"""

import argparse
import time

import torch

from rewards import load_reward
from search import SESConfig
from tscale_train.generation import generator_for_pipeline
from tscale_train.loading import load_pipeline, reward_kwargs_for
from tscale_train.ses import search_prompts


class Timed:
    """Wraps a callable and accumulates the seconds spent inside it."""

    def __init__(self, function):
        self.function, self.seconds = function, 0.0

    def __call__(self, *args, **kwargs):
        started = time.perf_counter()
        try:
            return self.function(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--budget", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    pipe = load_pipeline("tiny", dtype="float32", device="cpu")
    reward = load_reward("pickscore", device="cpu", **reward_kwargs_for("pickscore", "tiny"))
    print(f"tiny FLUX.2-klein, 64px, 4 steps, tiny PickScore, budget {args.budget}, torch threads {torch.get_num_threads()}")
    print("| eval batch size | candidates/s | generation % | scoring % | outside generation+scoring % |")
    print("|---|---|---|---|---|")
    for batch_size in (1, 10):
        generator = generator_for_pipeline(pipe, eval_batch_size=batch_size)
        generate, score = Timed(generator.generate), Timed(reward)
        generator.generate = generate
        rates, gen_share, score_share = [], [], []
        for repeat in range(args.repeats):
            generate.seconds = score.seconds = 0.0
            started = time.perf_counter()
            search_prompts(generator, score, ["sketch, a cat"], [repeat], budget=args.budget,
                           config=SESConfig(popsize=10), progress=False)
            total = time.perf_counter() - started
            rates.append(args.budget / total)
            gen_share.append(generate.seconds / total)
            score_share.append(score.seconds / total)
        best = max(range(args.repeats), key=lambda index: rates[index])
        print(f"| {batch_size} | {rates[best]:.1f} | {100 * gen_share[best]:.1f} | {100 * score_share[best]:.1f} | "
              f"{100 * (1 - gen_share[best] - score_share[best]):.1f} |")


if __name__ == "__main__":
    main()
