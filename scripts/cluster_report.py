"""Compare a cluster sweep with the same sweep on one GPU (scripts/device_cluster.sh writes both databases).

Usage: python scripts/cluster_report.py CLUSTER.duckdb SINGLE.duckdb WALL.json STATS.json OUT.json OUT.md

Reports the wall-time ratio, per-point tok/s agreement for the same variant (cluster run vs single-GPU run: when
the variant ran on another card in the cluster, this is GPU-to-GPU agreement), where each variant ran, and the
scheduler overhead per task (seconds from submit to the variant's process starting) from the coordinator's stats.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import duckdb

SQL = """
SELECT r.name, r.gpu_index, r.gpu_uuid, r.device_name, r.worker_address, p.batch,
       median(p.total_tps) FILTER (WHERE p.status = 'ok') AS tps, count(*) FILTER (WHERE p.status = 'ok') AS n_ok,
       count(*) AS n
FROM runs r JOIN points p USING (run_id)
GROUP BY ALL ORDER BY r.name, p.batch
"""


def rows(db: str) -> dict[tuple[str, int], dict]:
    con = duckdb.connect(db, read_only=True)
    try:
        cur = con.execute(SQL)
        cols = [d[0] for d in cur.description]
        return {(r[0], int(r[5])): dict(zip(cols, r, strict=True)) for r in cur.fetchall()}
    finally:
        con.close()


def main(cluster_db: str, single_db: str, wall_json: str, stats_json: str, out_json: str, out_md: str) -> int:
    cluster, single = rows(cluster_db), rows(single_db)
    wall = json.loads(Path(wall_json).read_text())
    stats = json.loads(Path(stats_json).read_text()) if Path(stats_json).exists() else {}
    pairs = []
    for key in sorted(set(cluster) & set(single)):
        c, s = cluster[key], single[key]
        if c["tps"] and s["tps"]:
            pairs.append({"variant": key[0], "batch": key[1], "cluster_gpu": c["gpu_index"], "single_gpu":
                          s["gpu_index"], "cluster_tps": c["tps"], "single_tps": s["tps"],
                          "diff_pct": 100.0 * (c["tps"] - s["tps"]) / s["tps"]})
    cross = [p for p in pairs if p["cluster_gpu"] != p["single_gpu"]]
    same = [p for p in pairs if p["cluster_gpu"] == p["single_gpu"]]

    def spread(ps: list[dict]) -> dict:
        d = [abs(p["diff_pct"]) for p in ps]
        return {"points": len(d), "median_abs_pct": statistics.median(d) if d else None,
                "max_abs_pct": max(d) if d else None, "within_2pct": sum(1 for x in d if x <= 2.0)}

    overhead = [t["overhead_s"] for t in stats.get("tasks", []) if t.get("overhead_s") is not None]
    summary = {
        "wall_cluster_s": wall.get("cluster_s"), "wall_single_s": wall.get("single_s"),
        "wall_ratio_single_over_cluster": (wall["single_s"] / wall["cluster_s"]) if wall.get("cluster_s") else None,
        "points_cluster": sum(r["n"] for r in cluster.values()), "points_single": sum(r["n"] for r in single.values()),
        "ok_cluster": sum(r["n_ok"] for r in cluster.values()), "ok_single": sum(r["n_ok"] for r in single.values()),
        "agreement_other_gpu": spread(cross), "agreement_same_gpu": spread(same),
        "placement": {k[0]: {"gpu": v["gpu_index"], "uuid": v["gpu_uuid"], "card": v["device_name"],
                             "worker": v["worker_address"]} for k, v in cluster.items()},
        "scheduler_overhead_s": {"tasks": len(overhead), "median": statistics.median(overhead) if overhead else None,
                                 "max": max(overhead) if overhead else None, "per_task": stats.get("tasks")},
        "write_s_median": stats.get("write_s_median"), "points_written": stats.get("points_written"),
        "writes": stats.get("writes"), "pairs": pairs,
    }
    Path(out_json).write_text(json.dumps(summary, indent=1, default=str))
    lines = ["# Two GPUs vs one", "",
             f"- wall: cluster {summary['wall_cluster_s']:.1f} s, one GPU {summary['wall_single_s']:.1f} s, ratio "
             f"{summary['wall_ratio_single_over_cluster']:.2f}x" if summary["wall_ratio_single_over_cluster"] else
             "- wall: n/a",
             f"- points ok: cluster {summary['ok_cluster']}/{summary['points_cluster']}, one GPU "
             f"{summary['ok_single']}/{summary['points_single']}",
             f"- tok/s agreement, variant on the other GPU: {summary['agreement_other_gpu']}",
             f"- tok/s agreement, variant on the same GPU: {summary['agreement_same_gpu']}",
             "- scheduler overhead (GPU free -> variant process started): median "
             f"{summary['scheduler_overhead_s']['median']} s, "
             f"max {summary['scheduler_overhead_s']['max']} s over {len(overhead)} tasks",
             f"- coordinator DuckDB writes: {summary['writes']} for {summary['points_written']} points, median "
             f"{summary['write_s_median']} s each", "",
             "| variant | batch | cluster GPU | single GPU | cluster tok/s | single tok/s | diff % |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {p['variant']} | {p['batch']} | {p['cluster_gpu']} | {p['single_gpu']} | {p['cluster_tps']:.1f} | "
              f"{p['single_tps']:.1f} | {p['diff_pct']:+.2f} |" for p in pairs]
    Path(out_md).write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:8]))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:7]))
