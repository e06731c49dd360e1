"""The README's "Which GPU do I need?" table, generated from the variant planner (never written by hand).

For every served id and every card of configs/cards.toml: the weight variant and placement the planner chooses
for the id's default request and its estimated seconds (server/engine/variant_setup.py `card_table`).

    python -m benchmarks.gpu_table            # print the table (Markdown)
    python -m benchmarks.gpu_table --write    # replace the table in README.md between its markers
"""

from __future__ import annotations

import argparse
from pathlib import Path

from server.config import DarkroomConfig
from server.engine.variant_setup import card_table

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- gpu-table:begin (python -m benchmarks.gpu_table --write) -->", "<!-- gpu-table:end -->"
CARDS = ("rtx4090", "rtx5090", "rtx6000-ada", "a6000", "h100", "h200")
_PLACES = {"resident": "resident", "model_cpu_offload": "model offload", "group_offload": "group offload"}


def table(config: DarkroomConfig) -> str:
    """The Markdown table: one row per id, one column per card."""
    columns = {card: {row.model_id: row.describe() for row in card_table(config, config.cards[card])}
               for card in CARDS}
    ids = list(columns[CARDS[0]])
    lines = ["| id (floor) | " + " | ".join(config.cards[c].label for c in CARDS) + " |",
             "|---|" + "---|" * len(CARDS)]
    for model_id in ids:
        cells = []
        for card in CARDS:
            d = columns[card][model_id]
            if d["variant"] is None:
                cells.append("does not fit")
                continue
            tier = f" at {d['tier']}" if d["tier"] else ""
            cells.append(f"{d['variant']}, {_PLACES[d['placement']]}{tier}, ~{d['seconds']:g} s")
        floor = columns[CARDS[0]][model_id]["floor"]
        lines.append(f"| `{model_id}` ({floor}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def readme_with_table(readme: str, config: DarkroomConfig) -> str:
    """README text with the generated table between the markers."""
    head, rest = readme.split(BEGIN, 1)
    _old, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{table(config)}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="update README.md in place")
    args = parser.parse_args(argv)
    config = DarkroomConfig.packaged()
    if args.write:
        path = ROOT / "README.md"
        path.write_text(readme_with_table(path.read_text(), config))
        print(f"wrote the table into {path.relative_to(ROOT)}")
    else:
        print(table(config))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
