"""The per-step profile: phases add up to the wall time, a nested phase is not counted twice."""

from __future__ import annotations

import time

from transpose.engine.step_profile import StepProfile


class Engine:
    def allreduce_gradients(self) -> str:
        time.sleep(0.02)
        return "reduced"

    def backward(self) -> str:
        time.sleep(0.03)
        return self.allreduce_gradients()


def test_phases_add_up_and_a_nested_phase_is_taken_out_of_its_parent():
    profile, engine = StepProfile(), Engine()
    profile.wrap(engine, "allreduce_gradients", "allreduce")
    started = time.perf_counter()
    for _ in profile.iterate(range(3)):
        with profile.phase("forward"):
            time.sleep(0.01)
        with profile.phase("backward"):
            assert engine.backward() == "reduced"  # the wrapped method still returns its value
    wall = time.perf_counter() - started
    ms = profile.per_step_ms()
    assert profile.steps == 3 and list(ms) == ["loader", "forward", "backward", "allreduce"]
    assert 9 <= ms["forward"] < 15 and 29 <= ms["backward"] < 40 and 19 <= ms["allreduce"] < 30
    assert abs(sum(ms.values()) * 3 / 1e3 - wall) < 0.01  # nothing counted twice, nothing left out


def test_reset_starts_a_new_epoch_and_sync_runs_at_every_boundary():
    calls = []
    profile = StepProfile(sync=lambda: calls.append(1))
    with profile.phase("optimizer"):
        pass
    assert len(calls) == 2
    profile.reset()
    assert profile.per_step_ms() == {} and profile.steps == 0
