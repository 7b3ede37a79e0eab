"""The eval plots do not mislead: whole-number position/γ ticks, one colour per draft in every plot."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from adaspec_dist.speculative.report import plot_per_position, plot_tau  # noqa: E402


def _result() -> dict:
    def draft(alpha):
        by_gamma = {}
        for g in (1, 2, 3, 5):
            per_pos = [alpha ** (0.1 * i) * alpha for i in range(g)]
            by_gamma[str(g)] = {"per_position": per_pos, "tau": 1 + sum(per_pos),
                                "tau_theory": (1 - alpha ** (g + 1)) / (1 - alpha)}
        return {"alpha_logits": alpha, "by_gamma": by_gamma}

    return {"drafts": {"adaspec": draft(0.7), "distillspec": draft(0.6), "sft": draft(0.4)}}


def _colors_by_draft(ax) -> dict[str, set]:
    out: dict[str, set] = {}
    for line in ax.get_lines():
        out.setdefault(line.get_label().split(" ")[0], set()).add(matplotlib.colors.to_hex(line.get_color()))
    return out


def test_ticks_are_whole_numbers_and_each_draft_keeps_its_colour():
    result = _result()
    fig, (a1, a2) = plt.subplots(1, 2)
    plot_per_position(result, a1)
    plot_tau(result, a2)
    fig.canvas.draw()
    for ax in (a1, a2):
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
    c1, c2 = _colors_by_draft(a1), _colors_by_draft(a2)
    assert set(c1) == set(c2) == set(result["drafts"])
    for name in result["drafts"]:
        assert len(c1[name]) == 1 and c1[name] == c2[name], (name, c1[name], c2[name])  # one colour, both plots
    assert len({next(iter(c)) for c in c1.values()}) == 3  # and different drafts differ
    assert a2.get_ylim()[0] == 1.0  # τ >= 1: the axis starts at the first possible value
    plt.close(fig)
