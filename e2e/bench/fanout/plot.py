"""Draws the fan-out plot from the results JSON of e2e/bench/fanout/run.

p99 latency (agent -> viewer) against viewers of one deployment, one panel per rate,
logstream and nchan, SSE and WebSocket, log y. A point where lines were lost or viewers
did not connect is ringed in red: its p99 covers only what arrived. Rows with stalled
viewers are left out (they are in the tables).

usage: plot.py RESULTS.json OUT.png
"""

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {"logstream": "tab:blue", "nchan": "tab:orange"}
LINES = {"sse": "-", "ws": "--"}
MARKERS = {"sse": "o", "ws": "s"}
BAR_MS = 1000.0


def main(results: str, out: str) -> None:
    with open(results) as f:
        rows = [
            r
            for r in json.load(f)["rows"]
            if r.get("stalled_percent", 0) == 0 and r.get("latency_ms")
        ]
    if not rows:
        sys.exit(f"{results}: no row with latencies to plot")
    rates = sorted({r["rate"] for r in rows})
    fig, axes = plt.subplots(
        1, len(rates), figsize=(6 * len(rates), 4.6), squeeze=False, sharey=True
    )
    ringed = False
    for ax, rate in zip(axes[0], rates):
        for system in sorted({r["system"] for r in rows}):
            for transport in ("sse", "ws"):
                pts = sorted(
                    (
                        (r["viewers"], r["latency_ms"]["p99"], r)
                        for r in rows
                        if r["rate"] == rate
                        and r["system"] == system
                        and r["transport"] == transport
                    ),
                    key=lambda p: p[0],
                )
                if not pts:
                    continue
                xs = [p[0] for p in pts]
                ys = [p[1] for p in pts]
                ax.plot(
                    xs,
                    ys,
                    LINES[transport],
                    marker=MARKERS[transport],
                    color=COLORS.get(system, "tab:gray"),
                    label=f"{system} {transport.upper()}",
                )
                for x, y, r in pts:
                    if r.get("lost", 0) > 0 or r.get("connect_failures", 0) > 0:
                        ringed = True
                        ax.plot(
                            x, y, "o", markersize=13, markerfacecolor="none",
                            markeredgecolor="red",
                        )
        ax.axhline(BAR_MS, color="gray", linestyle=":", linewidth=1)
        ax.text(ax.get_xlim()[0], BAR_MS * 1.1, " p99 = 1 s", color="gray", fontsize=8)
        ax.set_yscale("log")
        ax.set_xticks(sorted({r["viewers"] for r in rows}))
        ax.set_xlabel("viewers of one deployment")
        ax.set_title(f"{rate} lines/s")
        ax.grid(True, which="both", alpha=0.25)
    axes[0][0].set_ylabel("p99 latency, agent -> viewer (ms)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    if ringed:
        handles.append(
            plt.Line2D([], [], marker="o", markersize=10, markerfacecolor="none",
                       markeredgecolor="red", linestyle="none")
        )
        labels.append("lines lost or viewers not connected")
    axes[0][0].legend(handles, labels, fontsize=8)
    seconds = sorted({r["seconds"] for r in rows})
    fig.suptitle(
        "Fan-out: logstream (store + 2 edges) vs nginx + nchan, "
        f"{'/'.join(map(str, seconds))} s per point"
    )
    fig.tight_layout()
    fig.savefig(out, dpi=120)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
