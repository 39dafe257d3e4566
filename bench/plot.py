#!/usr/bin/env python3
"""Latency plot from bench/run.py's JSON: p50 and p99 of gatehouse (public, Bearer) beside nginx
proxy_pass and the best other peer, for HTTP/1.1 and HTTP/2 over TLS.

Usage: python3 bench/plot.py RESULTS.json [OUT.png]   (default: bench/latency.png)

Bars are the medians of clean runs; dots are the clean runs themselves, so that the spread is
visible next to the figure the table quotes. "Best other peer" is the one with the highest req/s
among those neither nginx proxy_pass nor gatehouse nor the bare upstream nor the bare hyper proxy
(references, not products a user would run).
"""

import importlib.util
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def ensure_matplotlib():
    if importlib.util.find_spec("matplotlib") is None:
        print("installing matplotlib (pip)", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                        "--root-user-action=ignore", "matplotlib"], check=True)
        importlib.invalidate_caches()


def pick(summary, runs, protocol):
    rows = [r for r in summary if r["protocol"] == protocol]
    by_key = {r["key"].removesuffix("-h2"): r for r in rows}
    chosen = []
    for key in ("gatehouse-public", "gatehouse-bearer", "nginx"):
        if key in by_key:
            chosen.append(by_key[key])
    others = [r for k, r in by_key.items()
              if r.get("reliable") and k not in ("direct", "nginx", "hyper") and not k.startswith("gatehouse")]
    if others:
        chosen.append(max(others, key=lambda r: r["rps"]))
    return [(r, [x for x in runs[r["key"]]["runs"] if x["clean"]]) for r in chosen]


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    source = sys.argv[1]
    out = sys.argv[2] if len(sys.argv) > 2 else os.path.join(HERE, "latency.png")
    with open(source) as f:
        data = json.load(f)

    ensure_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(p, pick(data["summary"], data["runs"], p)) for p in ("h1", "h2")]
    panels = [(p, chosen) for p, chosen in panels if chosen]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.8), squeeze=False)
    width = 0.38
    for ax, (protocol, chosen) in zip(axes[0], panels):
        for i, (row, clean) in enumerate(chosen):
            for offset, field, colour, name in ((-width / 2, "p50_us", "#4c72b0", "p50"),
                                                (width / 2, "p99_us", "#dd8452", "p99")):
                x = i + offset
                if row.get("reliable"):
                    ax.bar(x, row[field] / 1000, width, color=colour, label=name if i == 0 else None)
                    ax.scatter([x] * len(clean), [r[field] / 1000 for r in clean], s=10, color="black", zorder=3)
                else:
                    ax.text(x, 0, "unreliable", rotation=90, ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(chosen)))
        # At a fixed number of connections latency is the other face of throughput: show both.
        ax.set_xticklabels([f"{r['label']}\n{r['rps']:,.0f} req/s" if r.get("reliable") else r["label"]
                            for r, _ in chosen], fontsize=9)
        ax.set_ylabel("latency (ms)")
        ax.set_title("HTTP/1.1, wrk" if protocol == "h1" else "HTTP/2 over TLS, h2load")
        ax.grid(axis="y", alpha=0.3)
        ax.legend()
    meta = data["meta"]
    fig.suptitle(f"gatehouse vs peers: {meta['connections']} connections, one worker, "
                 f"{meta['repeats']} × {meta['duration_s']} s ({meta['date'][:10]})")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(out)


if __name__ == "__main__":
    main()
