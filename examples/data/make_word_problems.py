"""Writes word-problems.jsonl: short one-step arithmetic word problems (seeded, so the file is reproducible).

python examples/data/make_word_problems.py > examples/data/word-problems.jsonl
"""

from __future__ import annotations

import json
import random
import sys

NAMES = ["Tom", "Anna", "Ravi", "Mia", "Leo", "Sara", "Ben", "Yuki", "Omar", "Lena", "Kofi", "Ines"]
THINGS = ["apples", "books", "stickers", "marbles", "pencils", "cookies", "stamps", "shells", "coins", "cards"]


def problem(rng: random.Random) -> tuple[str, int]:
    name, other = rng.sample(NAMES, 2)
    thing = rng.choice(THINGS)
    kind = rng.choice(["add", "add", "sub", "mul", "add3"])
    if kind == "add":
        a, b = rng.randint(2, 20), rng.randint(2, 20)
        return f"{name} has {a} {thing}. {other} gives {name} {b} more. How many {thing} does {name} have now?", a + b
    if kind == "sub":
        a = rng.randint(8, 30)
        b = rng.randint(1, a - 1)
        return f"{name} had {a} {thing} and gave {b} of them to {other}. How many {thing} does {name} have left?", a - b
    if kind == "mul":
        a, b = rng.randint(2, 9), rng.randint(2, 9)
        return f"{name} has {a} bags with {b} {thing} in each bag. How many {thing} does {name} have?", a * b
    a, b, c = rng.randint(1, 12), rng.randint(1, 12), rng.randint(1, 12)
    return (
        f"{name} found {a} {thing} on Monday, {b} on Tuesday and {c} on Wednesday. "
        f"How many {thing} did {name} find in total?",
        a + b + c,
    )


def main(count: int = 512, seed: int = 2026) -> None:
    rng = random.Random(seed)
    for _ in range(count):
        prompt, answer = problem(rng)
        sys.stdout.write(json.dumps({"prompt": prompt, "answer": str(answer)}) + "\n")


if __name__ == "__main__":
    main()
