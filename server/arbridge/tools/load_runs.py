"""What a load run measures, for every contender of `arbridge bench` alike: each
stream's first-token and inter-token times and the tokens it got, with the
streams run `concurrency` at a time."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field


@dataclass
class Result:
    name: str
    concurrency: int
    requests: int
    tokens: int
    wall_s: float
    ttft_s: list[float] = field(default_factory=list)
    itl_s: list[float] = field(default_factory=list)
    # prompt's index -> the reply's ids (in-process runs), for comparing variants' text
    outputs: dict = field(default_factory=dict, repr=False)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s

    def pct(self, values: list[float], q: float) -> float | None:
        if not values:
            return None
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def summary(self) -> dict:
        return {"name": self.name, "concurrency": self.concurrency, "requests": self.requests,
                "tokens": self.tokens, "wall_s": self.wall_s,
                "tokens_per_s": self.tokens_per_s,
                "ttft_p50_s": self.pct(self.ttft_s, 0.5), "ttft_p95_s": self.pct(self.ttft_s, 0.95),
                "itl_p50_s": self.pct(self.itl_s, 0.5), "itl_p95_s": self.pct(self.itl_s, 0.95)}


def record(result: Result, times: list[float], submitted: float,
            tokens: int | None = None) -> None:
    """One stream's chunk arrival times; `tokens` when the server counted them
    (a chunk can carry several tokens, or none for a skipped special token)."""
    if times:
        result.ttft_s.append(times[0] - submitted)
        result.itl_s.extend(b - a for a, b in zip(times, times[1:], strict=False))
    result.tokens += tokens or len(times)


async def bounded(items, work, concurrency: int) -> None:
    gate = asyncio.Semaphore(concurrency)

    async def run(item):
        async with gate:
            await work(item)

    await asyncio.gather(*(run(item) for item in items))
