"""Pictures and text of a :class:`envs.rec_env.RecEnv` session (``render_mode="rgb_array"`` / ``"ansi"``).

Nothing here runs on the simulator's hot path: the env keeps a :class:`SessionView` only when a render mode is
set, and a picture is drawn only when ``render()`` is called (matplotlib's Agg canvas, no pyplot, no window).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from envs.catalog import Catalog
from envs.spaces import F_CF, F_LLM

#: Picture size in pixels (width, height of one slate row); the height grows with K.
WIDTH, ROW_HEIGHT, HEADER_HEIGHT, DPI = 800, 28, 96, 100


@dataclass
class SessionView:
    """What a render shows of one session; updated by the env after each reset and step.

    Attributes:
        user: Population index of the session's user.
        max_steps: The step limit T.
        t: Requests answered so far.
        total_reward: Sum of the rewards so far.
        clicks: Slates that got a click so far.
        purchases: Purchases so far.
        items: int64 (K,) catalog ids of the last slate shown (empty before the first step).
        llm_sim: float32 (K,) the shown items' ``llm_sim`` when they were shown.
        cf_score: float32 (K,) the shown items' ``cf_score`` when they were shown.
        click_rank: Position clicked in the last slate, -1 for none.
        dwell_s: Dwell seconds on the last click.
        purchase: Whether the last click ended in a purchase.
        done: ``"terminated"`` / ``"truncated"`` once the session ended, else ``""``.
    """

    user: int
    max_steps: int
    t: int = 0
    total_reward: float = 0.0
    clicks: int = 0
    purchases: int = 0
    items: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    llm_sim: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    cf_score: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    click_rank: int = -1
    dwell_s: float = 0.0
    purchase: bool = False
    done: str = ""

    def record(self, features: np.ndarray, slate: np.ndarray, items: np.ndarray, reward: float,
               info: dict[str, float | int | bool], done: str) -> None:
        """Take in one step.

        Args:
            features: float32 (N, F) the observation's features the slate was chosen from.
            slate: int64 (K,) the positions shown.
            items: int64 (K,) their catalog ids.
            reward: The step's reward.
            info: The step's info (``click_rank``, ``dwell``, ``purchase``).
            done: ``"terminated"``, ``"truncated"`` or ``""``.
        """
        self.t += 1
        self.total_reward += float(reward)
        self.click_rank = int(info["click_rank"])
        self.clicks += int(self.click_rank >= 0)
        self.purchase = bool(info["purchase"])
        self.purchases += int(self.purchase)
        self.dwell_s = float(info["dwell"])
        self.items = np.array(items, np.int64)
        self.llm_sim = features[slate, F_LLM].astype(np.float32)
        self.cf_score = features[slate, F_CF].astype(np.float32)
        self.done = done

    def header(self) -> tuple[str, str]:
        """Two lines: the session so far, and the user's response to the last slate."""
        end = f" ({self.done})" if self.done else ""
        first = (f"user {self.user}  ·  step {self.t}/{self.max_steps}{end}  ·  return {self.total_reward:.2f}  ·  "
                 f"clicks {self.clicks}  ·  purchases {self.purchases}")
        if self.t == 0:
            return first, "new session: no slate shown yet"
        if self.click_rank < 0:
            return first, "last slate: no click"
        buy = "purchase" if self.purchase else "no purchase"
        return first, f"last slate: click at rank {self.click_rank + 1}, dwell {self.dwell_s:.0f} s, {buy}"


def render_ansi(view: SessionView, catalog: Catalog) -> str:
    """The session as text: the header, then the last slate with the click marked ``*``."""
    lines = list(view.header())
    for k, item in enumerate(view.items.tolist()):
        mark = "*" if view.click_rank == k else " "
        lines.append(f" {mark}{k + 1:2d}. [{catalog.category_names[catalog.category[item]]}] "
                     f"llm {view.llm_sim[k]:+.2f} cf {view.cf_score[k]:+.2f}  {catalog.texts[item][:80]}")
    return "\n".join(lines)


def render_rgb(view: SessionView, catalog: Catalog, slate_size: int) -> np.ndarray:
    """The session as a picture: header lines, then one row per slate position (rank, category, item text,
    ``llm_sim`` and ``cf_score`` as numbers and bars), the clicked row highlighted.

    Args:
        view: The session.
        catalog: The world's catalog (texts, categories).
        slate_size: K (fixes the picture's height, so every frame of a session has one shape).

    Returns:
        uint8 (H, W, 3), H = ``HEADER_HEIGHT + K * ROW_HEIGHT``, W = ``WIDTH``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    height = HEADER_HEIGHT + slate_size * ROW_HEIGHT
    fig = Figure(figsize=(WIDTH / DPI, height / DPI), dpi=DPI, facecolor="white")
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.set_xlim(0, WIDTH)
    ax.set_ylim(height, 0)  # y grows downward, in pixels
    ax.axis("off")
    first, second = view.header()
    ax.text(10, 22, first, fontsize=10, weight="bold", va="center")
    ax.text(10, 46, second, fontsize=9, va="center", color="#b03030" if view.click_rank >= 0 else "#404040")
    y0 = HEADER_HEIGHT - 18
    columns = ((530, 620, "#3060c0"), (670, 760, "#30a050"))  # (number x, bar zero x, colour) of llm_sim, cf_score
    for x, label in ((10, "#"), (40, "category"), (170, "item"), (530, "llm_sim"), (670, "cf_score")):
        ax.text(x, y0, label, fontsize=8, color="#606060", va="center")
    for k, item in enumerate(view.items.tolist()):
        top = HEADER_HEIGHT + k * ROW_HEIGHT
        mid = top + ROW_HEIGHT / 2
        if view.click_rank == k:
            ax.add_patch(Rectangle((2, top + 1), WIDTH - 4, ROW_HEIGHT - 2, color="#ffe3b0"))
        ax.text(10, mid, f"{k + 1}", fontsize=9, va="center")
        ax.text(40, mid, catalog.category_names[catalog.category[item]][:18], fontsize=8, va="center")
        ax.text(170, mid, catalog.texts[item][:60], fontsize=8, va="center")
        for (x, zero, color), value in zip(columns, (view.llm_sim[k], view.cf_score[k]), strict=True):
            width = float(np.clip(value, -2.0, 2.0)) * 18.0  # 18 px per unit, capped at ±2
            ax.add_patch(Rectangle((min(zero, zero + width), top + 7), abs(width), ROW_HEIGHT - 14, color=color))
            ax.plot([zero, zero], [top + 4, top + ROW_HEIGHT - 4], color="#909090", linewidth=0.8)
            ax.text(x, mid, f"{value:+.2f}", fontsize=8, va="center")
    canvas.draw()
    return np.ascontiguousarray(np.asarray(canvas.buffer_rgba())[:, :, :3])
