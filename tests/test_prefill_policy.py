"""The prefill policy alone (engine/prefill_policy.py): no model, no tensors."""

from __future__ import annotations

from arbridge.engine.prefill_policy import PrefillPolicy, PromptState

POLICY = PrefillPolicy(budget=512, per_prompt_tokens=128, attention_tokens=3000,
                       min_tokens=16, patience=4)


def run_until_done(policy, prompts, turns=1000):
    """Plan turn after turn, reading what is planned; the turn each prompt finished."""
    finished = {}
    for turn in range(turns):
        live = [p for p in prompts if p.remaining > 0]
        if not live:
            break
        plan = policy.plan(live, turn)
        assert plan, "a turn with prompts waiting must advance one"
        for p, count in plan:
            assert 0 < count <= p.remaining
            p.done += count
            if p.remaining == 0:
                finished[p.key] = turn
    return finished


def test_a_short_prompt_behind_long_ones_finishes_in_its_first_turn():
    longs = [PromptState(f"long{i}", arrived=i, done=0, total=6500) for i in range(3)]
    short = PromptState("short", arrived=3, done=0, total=40)
    plan = dict((p.key, n) for p, n in POLICY.plan([*longs, short]))
    assert plan["short"] == 40
    # The long ones share the rest; none takes more than its per-turn share.
    assert all(n <= 128 for n in plan.values())


def test_in_arrival_order_among_equals():
    prompts = [PromptState(k, arrived=i, done=0, total=300) for i, k in enumerate("abcdef")]
    plan = [p.key for p, _ in POLICY.plan(prompts)]
    assert plan == sorted(plan) and plan[0] == "a"


def test_deep_positions_cost_more_so_a_turn_reads_fewer_tokens():
    at_start = POLICY.plan([PromptState("x", 0, done=0, total=8000)], budget=300)[0][1]
    deep = POLICY.plan([PromptState("x", 0, done=6000, total=8000)], budget=300)[0][1]
    assert deep < at_start and deep >= 16
    assert abs(POLICY.cost(6000, deep) - 300) / 300 < 0.05  # the budget, spent


def test_one_peer_s_many_prompts_do_not_crowd_out_another_s_one():
    crowd = [PromptState(f"a{i}", arrived=i, done=0, total=2000, peer="ipv4:10.0.0.1")
             for i in range(8)]
    lone = PromptState("b", arrived=8, done=0, total=2000, peer="ipv4:10.0.0.2")
    for turn in range(2):
        plan = [p.key for p, _ in POLICY.plan([*crowd, lone], turn)]
        assert "b" in plan[:2], (turn, plan)


def test_some_prompt_always_advances_however_small_the_budget():
    deep = PromptState("x", 0, done=7000, total=8000)
    plan = POLICY.plan([deep], budget=1)
    assert plan == [(deep, 16)]


def test_a_long_prompt_finishes_under_a_steady_stream_of_short_ones():
    long = PromptState("long", arrived=0, done=0, total=3000)
    prompts, finished, arrived = [long], {}, 1
    for turn in range(400):
        prompts = [p for p in prompts if p.remaining > 0]
        for _ in range(5):  # five new short prompts every turn: more than a turn reads
            prompts.append(PromptState(f"s{arrived}", arrived, 0, 100))
            arrived += 1
        for p, count in POLICY.plan(prompts, turn):
            p.done += count
            if p.remaining == 0:
                finished[p.key] = turn
        if "long" in finished:
            break
    assert "long" in finished, "starved"


def test_every_prompt_finishes_and_short_ones_first():
    prompts = [PromptState("long", 0, 0, 6500), PromptState("mid", 1, 0, 900),
               PromptState("short", 2, 0, 60)]
    finished = run_until_done(POLICY, prompts)
    assert finished["short"] == 0 and finished["short"] < finished["mid"] < finished["long"]
