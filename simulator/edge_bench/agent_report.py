"""``bench/edge.py``'s figures of the agent over its runs (the worst run's memory, every run's
RSS and slope), and their table."""

from __future__ import annotations

from typing import Any

from simulator.edge_bench.agent_memory import format_import_costs


def agent_figures(runs: list[dict[str, Any]], soak: float) -> dict[str, Any]:
    """The agent's figures over its runs: RSS is the largest sample of any run."""
    worst = max(runs, key=lambda r: r["rss_bytes"])
    memories = [r["memory"] for r in runs]
    mb = 2**20
    return {
        "agent_rss_bytes": worst["rss_bytes"],
        "agent_rss_mb": round(worst["rss_bytes"] / mb, 1),
        "agent_rss_mb_runs": [round(r["rss_bytes"] / mb, 1) for r in runs],
        "agent_rss_mb_first_last_runs": [
            [round(r["rss_first_bytes"] / mb, 1), round(r["rss_last_bytes"] / mb, 1)]
            for r in runs
        ],
        "agent_seconds_sampled": soak,
        # creep of each run's RSS after its warm-up (None: run too short to tell)
        "agent_rss_slope_mb_per_h_runs": [r["rss_slope_mb_per_h"] for r in runs],
        # the worst run's memory every SNAPSHOT_EVERY_S: where the steady state begins
        "agent_memory_series": worst["series"],
        "agent_pss_mb": max(m["pss_mb"] for m in memories),
        "agent_private_mb": max(m["private_mb"] for m in memories),
        "agent_anonymous_mb": max(m["anonymous_mb"] for m in memories),
        "agent_file_mb": max(m["file_mb"] for m in memories),
        "agent_threads": worst["memory"]["threads"],
        "agent_thread_stacks_kb": worst["memory"]["thread_stacks_kb"],
        "agent_rss_by_mapping_mb": worst["memory"]["by_mapping_mb"],
        # the worst run's RSS at its end by kind of memory (KINDS of
        # simulator/edge_bench/agent_memory.py)
        "agent_rss_by_kind_mb": worst["memory"]["by_kind_mb"],
        "agent_inference_us_p50": worst["inference_us_p50"],
        "agent_inference_us_p99": worst["inference_us_p99"],
        "agent_tensorflow_loaded": any(r["tensorflow_loaded"] for r in runs),
    }


def print_agent(agent: dict[str, Any]) -> None:
    ok = agent["agent_rss_bytes"] <= 50_000_000
    print(f"\nagent RSS (max of every sample of {len(agent['agent_rss_mb_runs'])} run(s) over "
          f"{agent['agent_seconds_sampled']:.0f} s): {agent['agent_rss_bytes']:,} B, bar "
          f"<= 50,000,000: {'yes' if ok else 'NO'}")
    slopes = [v for v in agent["agent_rss_slope_mb_per_h_runs"] if v is not None]
    print(f"max {agent['agent_rss_mb']} MiB; slope after each run's warm-up "
          f"{agent['agent_rss_slope_mb_per_h_runs']} MiB/h"
          + (f" (worst {max(slopes, key=abs)})" if slopes else ""))
    kinds = list(agent["agent_rss_by_kind_mb"])
    short = {"heap": "heap", "malloc_arenas": "arenas", "anonymous_mmaps": "mmaps",
             "thread_stacks": "stacks", "library_data": "libdata", "file_pages": "files"}
    print(f"{'s':>6} {'RSS':>6} {'PSS':>6} {'anon':>6} "
          + " ".join(f"{short.get(k, k)[:7]:>7}" for k in kinds)
          + f" {'outbox':>7} {'load1':>6}   (MiB)")
    for row in agent["agent_memory_series"]:
        by_kind = row.get("by_kind_mb", {})
        print(f"{row['s']:>6} {row['rss_mb']:>6} {row['pss_mb']:>6} {row['anonymous_mb']:>6} "
              + " ".join(f"{by_kind.get(k, 0):>7}" for k in kinds)
              + f" {row['outbox_depth']!s:>7} {row['load1']:>6}")
    for k, v in agent.items():
        if k not in ("agent_memory_series", "agent_import_costs"):
            print(f"{k:<34}  {v}")
    if "agent_import_costs" in agent:
        print("\n" + format_import_costs(agent["agent_import_costs"]))
