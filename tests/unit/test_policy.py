"""The VRAM-aware policy (server/engine/policy.py) against fake devices: bytes and seconds, no tensors."""

from __future__ import annotations

import pytest

from server.engine.policy import (
    EVICTION_ORDERS,
    GB,
    BatchConfig,
    DeviceState,
    ModelFootprint,
    NeverFits,
    Placement,
    QueuedItem,
    Resident,
    Transfer,
    batch_key_difference,
    largest_batch,
    pick_batch,
    plan_residency,
)
from tests.packaged import packaged_config

T = Transfer(disk_gb_per_s=2.0, ram_gb_per_s=20.0, fixed_s=0.0)
KONTEXT = ModelFootprint("kontext", (24 * GB, 10 * GB))
QWEN = ModelFootprint("qwen", (41 * GB, 17 * GB))
SDXL = ModelFootprint("sdxl", (5 * GB, 2 * GB))


def _device(budget_gb: float, *resident: tuple[str, int, float], ram: frozenset[str] = frozenset(),
            ram_free_gb: float = 500) -> DeviceState:
    return DeviceState("gpu0", int(budget_gb * GB), tuple(Resident(n, b, t) for n, b, t in resident), ram,
                       int(ram_free_gb * GB))


@pytest.mark.parametrize("order", sorted(EVICTION_ORDERS))
def test_two_models_that_each_fit_but_not_together(order: str) -> None:
    dev = _device(78, ("kontext", KONTEXT.bytes, 1.0))
    plan = plan_residency(dev, QWEN, 6 * GB, {}, EVICTION_ORDERS[order], T)
    assert plan.placement is Placement.RESIDENT
    assert [(m.model, m.action) for m in plan.moves] == [("kontext", "offload_to_ram"), ("qwen", "load")]
    assert plan.load_s == pytest.approx(58 / 2.0)  # first time: from disk
    assert plan.peak_bytes <= dev.budget
    # Coming back from pinned RAM is ten times cheaper than from disk.
    back = plan_residency(_device(78, ("qwen", QWEN.bytes, 2.0), ram=frozenset({"kontext"})), KONTEXT, 6 * GB, {},
                          EVICTION_ORDERS[order], T)
    assert back.moves[-1].from_ram and back.load_s == pytest.approx(34 / 20.0)


def test_without_ram_room_victims_go_to_disk() -> None:
    plan = plan_residency(_device(78, ("kontext", KONTEXT.bytes, 1.0), ram_free_gb=10), QWEN, 6 * GB, {},
                          EVICTION_ORDERS["lru"], T)
    assert plan.moves[0].action == "evict_to_disk"


def test_a_resident_model_needs_only_activation_room() -> None:
    dev = _device(78, ("kontext", KONTEXT.bytes, 1.0), ("sdxl", SDXL.bytes, 2.0))
    assert plan_residency(dev, KONTEXT, 6 * GB, {}, EVICTION_ORDERS["lru"], T).moves == ()
    big = plan_residency(dev, KONTEXT, 40 * GB, {}, EVICTION_ORDERS["lru"], T)
    assert [m.model for m in big.moves] == ["sdxl"] and big.load_s == 0.0


def test_fallbacks_model_offload_then_group_offload_then_refusal() -> None:
    # 24 GB card: Kontext (34 GB) cannot be resident; its largest component (24 GB) cannot sit alone either.
    small = plan_residency(_device(30), KONTEXT, 3 * GB, {}, EVICTION_ORDERS["lru"], T)
    assert small.placement is Placement.MODEL_OFFLOAD  # 24 + 3 <= 30
    tiny = plan_residency(_device(22), KONTEXT, 3 * GB, {}, EVICTION_ORDERS["lru"], T)
    assert tiny.placement is Placement.GROUP_OFFLOAD  # 2.4 + 3 <= 22
    assert tiny.moves == (tiny.moves[0],) and tiny.moves[0].action == "load"  # into host RAM, from disk
    with pytest.raises(NeverFits) as exc:
        plan_residency(_device(4), KONTEXT, 3 * GB, {}, EVICTION_ORDERS["lru"], T)
    assert exc.value.need == int(2.4 * GB) + 3 * GB and exc.value.have == 4 * GB
    assert "5.4 GB" in str(exc.value)


def test_eviction_orders_differ_as_named() -> None:
    residents = [Resident("big-old", 30 * GB, 1.0), Resident("small-new", 5 * GB, 9.0), Resident("mid", 10 * GB, 5.0)]
    names = {k: [r.name for r in f(residents, {"big-old": 3}, T, frozenset())] for k, f in EVICTION_ORDERS.items()}
    assert names["lru"] == ["big-old", "mid", "small-new"]
    assert names["smallest_first"] == ["small-new", "mid", "big-old"]
    # Nobody waits for mid or small-new: those go first (oldest first); big-old has 3 queued jobs.
    assert names["cost_aware"] == ["mid", "small-new", "big-old"]


def test_no_budget_means_no_moves_but_loads() -> None:
    cpu = DeviceState("cpu", None, (Resident("sdxl", SDXL.bytes, 0.0),))
    assert plan_residency(cpu, SDXL, GB, {}, EVICTION_ORDERS["lru"], T).moves == ()
    assert plan_residency(cpu, KONTEXT, GB, {}, EVICTION_ORDERS["lru"], T).moves[0].action == "load"


def test_largest_batch_follows_the_memory_estimate() -> None:
    assert largest_batch(SDXL, 3 * GB, 78 * GB, 8) == 8
    assert largest_batch(QWEN, 8 * GB, 78 * GB, 8) == 2  # (78 - 58) // 8
    assert largest_batch(QWEN, 30 * GB, 78 * GB, 8) == 1  # never below one
    assert largest_batch(QWEN, 30 * GB, None, 8) == 8


# ---- batching ------------------------------------------------------------------------------------------

def _q(i: int, model: str, key: str = "k", t: float = 0.0, priority: int = 0) -> QueuedItem:
    return QueuedItem(f"j{i}", model, key, t, priority)


def _switch(load_s: float):
    return lambda model: load_s


def test_same_model_and_key_share_a_batch_up_to_the_cap() -> None:
    queue = [_q(i, "sdxl", t=i) for i in range(6)] + [_q(9, "sdxl", key="other", t=0.5)]
    choice = pick_batch(queue, _device(78, ("sdxl", SDXL.bytes, 0.0)), now=10, config=BatchConfig(max_batch=4),
                        switch_seconds=_switch(5.0), max_batch_for=lambda m, k: 3)
    assert choice is not None and choice.job_ids == ("j0", "j1", "j2")
    assert dict(choice.not_batched) == {"batch_full": 3, "field_0": 1}


def test_reasons_are_named_by_the_batch_key_fields() -> None:
    names = ("family", "task", "width", "height", "steps")
    assert batch_key_difference("sdxl|edit|1024|1024|30", "sdxl|edit|1024|768|30", names) == "height"
    assert batch_key_difference("a|b", "a|b|c", names) == "shape"


def test_resident_work_first_until_waiting_pays_for_the_load() -> None:
    dev = _device(78, ("sdxl", SDXL.bytes, 0.0))
    fresh = [_q(0, "kontext", t=0.0), _q(1, "sdxl", t=1.0)]
    # Kontext's job is 1 s older, but loading it costs 17 s: stay on the resident model.
    assert pick_batch(fresh, dev, now=2.0, config=BatchConfig(), switch_seconds=_switch(17.0)).model == "sdxl"
    # Aging: once Kontext's job has waited longer than its load, it goes next even though SDXL work keeps coming.
    stream = [_q(0, "kontext", t=0.0), _q(1, "sdxl", t=19.0)]
    assert pick_batch(stream, dev, now=20.0, config=BatchConfig(), switch_seconds=_switch(17.0)).model == "kontext"
    # Queued demand pays sooner: four Kontext jobs spread the load over four.
    one = [_q(0, "kontext", t=0.0), _q(9, "sdxl", t=8.0)]
    assert pick_batch(one, dev, now=10.0, config=BatchConfig(), switch_seconds=_switch(17.0)).model == "sdxl"
    four = [_q(i, "kontext", t=0.0) for i in range(4)] + [_q(9, "sdxl", t=8.0)]
    assert pick_batch(four, dev, now=10.0, config=BatchConfig(), switch_seconds=_switch(17.0)).model == "kontext"


def test_no_model_starves_under_a_steady_stream() -> None:
    """Simulate a resident model fed a job every second; a lone job for another model must run within its load."""
    dev = _device(78, ("sdxl", SDXL.bytes, 0.0))
    lonely = _q(0, "kontext", t=0.0)
    queue = [lonely]
    now = 0.0
    for i in range(1, 100):
        queue.append(_q(i, "sdxl", t=now))
        choice = pick_batch(queue, dev, now, BatchConfig(max_batch=1), _switch(17.0))
        assert choice is not None
        if choice.model == "kontext":
            break
        queue = [j for j in queue if j.id not in choice.job_ids]
        now += 1.0
    assert choice.model == "kontext" and now <= 18.0


def test_priority_is_worth_waiting_seconds() -> None:
    dev = _device(78, ("sdxl", SDXL.bytes, 0.0), ("kontext", KONTEXT.bytes, 0.0))
    queue = [_q(0, "sdxl", t=0.0), _q(1, "kontext", t=10.0, priority=1)]
    assert pick_batch(queue, dev, 12.0, BatchConfig(priority_s=30.0), _switch(0.0)).model == "kontext"
    assert pick_batch(queue, dev, 12.0, BatchConfig(priority_s=5.0), _switch(0.0)).model == "sdxl"


def test_max_wait_holds_a_small_batch_for_mates() -> None:
    dev = _device(78, ("sdxl", SDXL.bytes, 0.0))
    queue = [_q(0, "sdxl", t=10.0)]
    held = BatchConfig(max_batch=4, max_wait_s=0.5)
    assert pick_batch(queue, dev, 10.2, held, _switch(0.0)) is None
    assert pick_batch(queue, dev, 10.6, held, _switch(0.0)).job_ids == ("j0",)
    full = [_q(i, "sdxl", t=10.0) for i in range(4)]
    assert len(pick_batch(full, dev, 10.1, held, _switch(0.0)).job_ids) == 4


def test_two_gpus_each_take_the_work_for_what_they_hold() -> None:
    a = DeviceState("gpu0", 78 * GB, (Resident("kontext", KONTEXT.bytes, 0.0),))
    b = DeviceState("gpu1", 78 * GB, (Resident("sdxl", SDXL.bytes, 0.0),))
    queue = [_q(0, "sdxl", t=0.0), _q(1, "kontext", t=0.5)]

    def load_to(dev: DeviceState):
        return lambda model: 0.0 if dev.resident(model) else 17.0

    assert pick_batch(queue, a, 1.0, BatchConfig(), load_to(a)).model == "kontext"
    assert pick_batch(queue, b, 1.0, BatchConfig(), load_to(b)).model == "sdxl"


def test_every_family_has_activation_coefficients_in_configs() -> None:
    from pipelines.registry import FAMILIES

    config = packaged_config()
    for name in FAMILIES:
        c = config.coefficients(name)
        assert c.bytes_per_token > 0 and (c.vae_bytes_per_pixel > 0 or c.vae_bytes_per_voxel > 0), name
    with pytest.raises(KeyError, match="memory.toml"):
        config.coefficients("nope")


def test_every_family_has_costs_for_admission_and_the_simulator() -> None:
    from pipelines.registry import FAMILIES

    costs = packaged_config().costs
    assert set(FAMILIES) <= set(costs.families)
    sdxl = costs.families["sdxl"]
    assert sdxl.job_seconds(30, 1024 * 1024) == pytest.approx(sdxl.job_s)
    assert sdxl.job_seconds(15, 2048 * 2048) == pytest.approx(sdxl.job_s * 2)
