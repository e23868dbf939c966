"""The optimisation loop's policies (recon/loop.py), each on its own."""

import math

import pytest
import torch
from torch import nn

from nvplive.recon.loop import (
    LATENCY_ITERATION_CAP,
    CoherenceCache,
    DivergenceGuard,
    IterationBudget,
    LatencyBudget,
    LearningRateDecay,
    PlateauDetector,
    RefineSchedule,
    StopPolicy,
    adam_after_refinement,
    time_is_up,
)
from nvplive.recon.methods import METHOD_LABELS, METHODS
from nvplive.recon.phantoms import PHANTOMS
from nvplive.recon.reconstructor import ReconConfig
from nvplive.recon.representations import NVP, REPRESENTATIONS, Explicit, Triplane, representation_for


# --- budgets and stop policies ----------------------------------------------------------------
def test_an_iteration_budget_runs_its_iterations_checked_at_the_configs_interval():
    policy = StopPolicy.warm(IterationBudget(40, stop_on_plateau=True), check_every=10)
    assert (policy.iterations, policy.check_every, policy.stop_on_plateau, policy.seconds) == (40, 10, True, None)
    assert [it for it in range(1, 41) if policy.checks_at(it)] == [10, 20, 30, 40]


def test_a_latency_budget_runs_until_its_time_checking_every_iteration_without_a_plateau_stop():
    policy = StopPolicy.warm(LatencyBudget(0.5), check_every=10)
    assert (policy.iterations, policy.check_every, policy.stop_on_plateau, policy.seconds) == (LATENCY_ITERATION_CAP, 1, False, 0.5)


def test_a_cold_start_neither_stops_on_a_plateau_nor_watches_the_clock():
    policy = StopPolicy.cold(300, check_every=7)
    assert (policy.iterations, policy.check_every, policy.stop_on_plateau, policy.seconds) == (300, 7, False, None)
    assert policy.checks_at(7) and policy.checks_at(300) and not policy.checks_at(8)


def test_the_budget_is_saved_with_its_kind():
    assert ReconConfig(warm_budget=LatencyBudget(0.25)).to_dict()["warm_budget"] == {
        "kind": "latency", "seconds": 0.25, "check_every": 1, "max_iterations": LATENCY_ITERATION_CAP}
    assert ReconConfig().to_dict()["warm_budget"] == {"kind": "iterations", "iterations": 40, "stop_on_plateau": True}
    assert (IterationBudget(12).label, LatencyBudget(0.5).label) == ("12 it", "0.50 s")


# --- plateau and time -----------------------------------------------------------------------------
def test_plateau_is_an_improvement_below_the_relative_tolerance():
    detector = PlateauDetector(rel_tol=0.01)
    assert not detector.update(1.0)  # the first check has nothing to compare with
    assert not detector.update(0.9)  # 10 % better
    assert detector.update(0.895)  # 0.6 % better
    assert detector.update(0.95)  # worse
    detector.reset()
    assert not detector.update(0.95)


def test_time_is_up_when_one_more_iteration_and_the_finish_would_overrun():
    # 0.8 s spent in 4 iterations (0.2 s each) + 0.1 s finish: a fifth ends at 1.1 s > 1.0 s
    assert time_is_up(0.8, 4, None, 0.1, 1.0)
    assert not time_is_up(0.6, 4, None, 0.1, 1.0)  # 0.75 s: one more fits
    # the previous update's slower rate wins (a machine that slowed down plans with it too)
    assert time_is_up(0.6, 4, 0.35, 0.1, 1.0)


# --- divergence -----------------------------------------------------------------------------------
def test_divergence_is_a_non_finite_or_exploding_loss_and_rolls_back_to_the_last_good_state():
    layer = nn.Linear(2, 1)
    offset = torch.zeros(3)
    guard = DivergenceGuard(10.0, layer, [offset])
    assert not guard.diverged([2.0, 1.5])  # the first finite loss (2.0) is the reference
    assert not guard.diverged([19.0])
    assert guard.diverged([21.0]) and guard.diverged([math.nan]) and guard.diverged([1.0, math.inf])
    kept = layer.weight.detach().clone()
    with torch.no_grad():
        layer.weight.add_(5.0)
        offset.add_(1.0)
    guard.roll_back()
    assert torch.equal(layer.weight, kept) and torch.equal(offset, torch.zeros(3))
    guard.keep()
    with torch.no_grad():
        layer.weight.mul_(2.0)
    guard.roll_back()
    assert torch.equal(layer.weight, kept)


def test_the_reference_is_the_first_finite_loss():
    guard = DivergenceGuard(2.0, nn.Linear(1, 1), [])
    assert guard.diverged([math.nan])
    assert not guard.diverged([3.0]) and guard.reference == 3.0
    assert guard.diverged([6.5])


# --- coarse-to-fine schedule ----------------------------------------------------------------------
def test_a_cold_start_refines_at_evenly_spaced_iterations_or_earlier_on_a_plateau():
    schedule = RefineSchedule(100, levels=3, warm=False)
    assert schedule.at == [30, 60]
    assert schedule.scheduled(30) and not schedule.scheduled(31)
    assert schedule.due(12, plateau=True) and not schedule.due(12, plateau=False)
    assert not schedule.due(70, plateau=True)  # past 60 % of the budget
    schedule.refined(12)
    assert schedule.at == [30, 60]
    schedule.refined(30)
    assert schedule.at == [60]


def test_a_warm_update_or_a_single_level_never_refines():
    assert RefineSchedule(100, levels=2, warm=True).at == []
    assert not RefineSchedule(100, levels=2, warm=True).due(5, plateau=True)
    assert not RefineSchedule(100, levels=1, warm=False).due(5, plateau=True)


def test_a_cold_start_decays_its_rate_geometrically_over_its_last_iterations():
    decay = LearningRateDecay(100, fraction=0.01)
    assert decay.start == 60  # REFINE_WITHIN of the iterations
    assert [decay.factor(it) for it in (1, 30, 60)] == [1.0, 1.0, 1.0]
    assert decay.factor(80) == pytest.approx(0.1)  # half way: √0.01
    assert decay.factor(100) == pytest.approx(0.01)
    factors = [decay.factor(it) for it in range(60, 101)]
    assert all(b < a for a, b in zip(factors, factors[1:]))
    decay.refined(70)  # a refinement after 60 %: the decay starts there
    assert decay.factor(70) == 1.0 and decay.factor(85) == pytest.approx(0.1)
    decay.refined(20)  # an earlier refinement does not move it back
    assert decay.start == 70


def test_a_warm_update_or_a_fraction_of_one_keeps_the_rate():
    assert LearningRateDecay(100, fraction=0.01, warm=True).factor(100) == 1.0
    assert LearningRateDecay(100, fraction=1.0).factor(100) == 1.0


def test_a_refinement_keeps_the_moments_of_the_parameters_that_stay():
    rep = NVP((8, 16, 16), features=4, hidden=8)
    optimizer = torch.optim.Adam(rep.parameter_groups(0.01))
    for _ in range(3):
        optimizer.zero_grad()
        (rep() ** 2).sum().backward()
        optimizer.step()
    old_grid = rep.grid
    assert rep.refine()
    refined = adam_after_refinement(optimizer, rep.parameter_groups(0.01))
    kept = [*rep.planes, *rep.decoder.parameters()]
    assert all(refined.state[p] is optimizer.state[p] for p in kept)
    assert rep.grid not in refined.state and old_grid not in refined.state  # the finer grid starts afresh
    assert [g["lr"] for g in refined.param_groups] == [g["lr"] for g in rep.parameter_groups(0.01)]


# --- coherence weights ------------------------------------------------------------------------------
def test_coherence_weights_are_reused_until_they_are_old_or_invalidated():
    cache = CoherenceCache(refresh_iterations=3)
    computed = []

    def compute():
        computed.append(1)
        return torch.full((2,), float(len(computed)))

    assert cache.stale and cache.get(compute)[0] == 1.0
    for _ in range(2):
        cache.tick()
    assert not cache.stale and cache.get(compute)[0] == 1.0
    cache.tick()
    assert cache.stale and cache.get(compute)[0] == 2.0
    cache.invalidate()
    assert cache.get(compute)[0] == 3.0 and len(computed) == 3


# --- one home for names and options -----------------------------------------------------------------
def test_methods_and_phantoms_are_named_once():
    assert tuple(REPRESENTATIONS) == METHODS == tuple(METHOD_LABELS)
    assert tuple(PHANTOMS) == ("cell", "tissue", "cardiomyocyte")


@pytest.mark.parametrize(("method", "cls", "keys"), [
    ("nvp", NVP, {"nonnegative", "seed", "features", "hidden", "coarse_to_fine", "feature_planes"}),
    ("explicit", Explicit, {"nonnegative"}),
    ("triplane", Triplane, {"nonnegative", "seed", "features", "hidden"}),
])
def test_each_representation_takes_its_own_options_from_the_config(method, cls, keys):
    config = ReconConfig(method=method, features=4, hidden=8, feature_planes=False, nonnegative=False)
    assert set(cls.options(config)) == keys
    rep = representation_for(config, (4, 6, 6))
    assert type(rep) is cls and rep.nonnegative is False
    if method != "explicit":
        assert rep.decoder.layers[0].in_features == 4 and rep.decoder.layers[0].out_features == 8
    with pytest.raises(ValueError, match="Unknown method"):
        representation_for(ReconConfig(method="voxels"), (4, 6, 6))


def test_the_config_reads_back_what_it_saved():
    for budget in (IterationBudget(7, stop_on_plateau=False), LatencyBudget(0.3, check_every=1000, max_iterations=200)):
        config = ReconConfig(method="triplane", warm_budget=budget, tv_weight=0.01)
        assert ReconConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="Unknown warm budget kind"):
        ReconConfig.from_dict({"warm_budget": {"kind": "forever"}})
