"""Figure: KSR against GRU4Rec (--no_memory) on a planted dataset, from two train.py runs.

    python docs/planted.py RUN_KSR RUN_GRU4REC --out docs/planted-syn-1m.png

Plots each run's valid MRR@10 per epoch (from its results.json) and prints both runs'
test metrics of the best-valid checkpoint as a markdown table. docs/results.md says how the
runs were made.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from extras.explain import _pyplot, _save_figure  # noqa: E402  (matplotlib's message if it is missing; atomic write)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs=2, metavar="RUN_DIR")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    results = []
    for run in args.runs:
        with open(os.path.join(run, "results.json")) as f:
            results.append(json.load(f))
    label = lambda r: "GRU4Rec (--no_memory)" if r["config"]["no_memory"] else "KSR"
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for r in results:
        ax.plot(range(1, len(r["valid"]) + 1), [v["mrr@10"] for v in r["valid"]], marker="o", label=label(r))
    ax.set_xlabel("epoch")
    ax.set_ylabel("valid MRR@10")
    ax.set_title(f"{results[0]['config']['dataset']}: {results[0]['dataset']['interactions']:,} interactions, "
                 f"{results[0]['dataset']['items']:,} items", fontsize=9)
    ax.legend()
    _save_figure(fig, args.out)
    print("| model | best epoch | valid MRR@10 | test NDCG@10 | test Hit@10 | test MRR@10 |\n|---|---|---|---|---|---|")
    for r in results:
        t = r["test"]
        print(f"| {label(r)} | {r['best_epoch']} | {r['best_valid']['mrr@10']:.4f} | {t['ndcg@10']:.4f} | "
              f"{t['hit@10']:.4f} | {t['mrr@10']:.4f} |")


if __name__ == "__main__":
    main()
