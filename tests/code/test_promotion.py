"""The promotion gate of `register`, as a pure function: every case without MLflow."""

from __future__ import annotations

from components.steps.register import Comparison, decide_promotion


def test_first_version_becomes_champion() -> None:
    decision = decide_promotion("1", 0.5, min_improvement=0.1)
    assert decision.promoted and decision.champion_top1 is None
    assert decision.text == "version 1 is the first: champion (val top-1 0.5000)"


def test_better_version_is_promoted_and_worse_is_not() -> None:
    better = decide_promotion("3", 0.92, 0.0, champion="2", champion_top1=0.90)
    assert better.promoted and (better.new_top1, better.champion_top1) == (0.92, 0.90)
    assert better.text.endswith("vs champion version 2 (0.9000) + min_improvement 0.0: promoted to champion")
    worse = decide_promotion("3", 0.88, 0.0, champion="2", champion_top1=0.90)
    assert not worse.promoted
    assert worse.text.endswith(": not promoted; champion stays")


def test_min_improvement_is_a_margin_the_new_score_must_reach() -> None:
    assert decide_promotion("2", 0.9, 0.0, champion="1", champion_top1=0.9).promoted  # a tie, no margin: promoted
    assert not decide_promotion("2", 0.9, 0.02, champion="1", champion_top1=0.9).promoted  # equal within the margin
    assert not decide_promotion("2", 0.91, 0.02, champion="1", champion_top1=0.9).promoted
    # Exactly the margin is enough, whatever float rounding does to 0.8 + 0.1.
    assert decide_promotion("2", 0.9, 0.1, champion="1", champion_top1=0.8).promoted
    # The same weights again: the champion's tagged score has 6 decimals, the new one is exact.
    assert decide_promotion("2", 0.9331476323119777, 0.0, champion="1", champion_top1=float("0.933148")).promoted


def test_champion_scored_again_on_the_current_val_set() -> None:
    """The comparison's scores replace the tagged ones, and the decision says where they come from."""
    comparison = Comparison(new_top1=0.75, champion_top1=0.8, images=40, left_out=10)
    decision = decide_promotion("4", 0.95, 0.0, champion="3", comparison=comparison)
    assert not decision.promoted and (decision.new_top1, decision.champion_top1) == (0.75, 0.8)
    assert "on 40 current val images (the champion was scored on another val set; 10 it trained on left out)" in (
        decision.text
    )
    whole = decide_promotion("4", 0.9, 0.0, champion="3", comparison=Comparison(0.9, 0.85, 50, 0))
    assert whole.promoted and "on 50 current val images (the champion was scored on another val set)" in whole.text


def test_champion_that_cannot_be_compared_is_replaced() -> None:
    decision = decide_promotion("5", 0.6, 0.3, champion="4")
    assert decision.promoted and decision.champion_top1 is None
    assert "cannot be compared: promoted to champion" in decision.text


def test_rollback_goes_back_one_champion_per_call() -> None:
    from components.integrations.mlflow_registry import ChampionChange, rollback_target

    def change(version: int, previous: int | None, rollback: bool = False) -> ChampionChange:
        return ChampionChange("2026-12-01T00:00:00+00:00", version, previous, "me@host", "why", rollback)

    assert rollback_target([]) is None
    assert rollback_target([change(1, None)]) is None  # the first champion has nothing before it
    promoted = [change(1, None), change(2, 1), change(3, 2)]
    assert rollback_target(promoted) == 2
    assert rollback_target([*promoted, change(2, 3, rollback=True)]) == 1  # twice: two champions back
    assert rollback_target([*promoted, change(2, 3, True), change(1, 2, True)]) is None
    # A champion promoted before the history was kept (version 1 here) still counts.
    assert rollback_target([change(4, 1)]) == 1
    # Promoting by hand after a rollback stacks up again.
    assert rollback_target([*promoted, change(2, 3, True), change(5, 2)]) == 2
