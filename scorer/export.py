"""CSV and JSON of the record: one match (with its point log) or a club's matches. Used by
the pages' download links, the API and ``rallycast export``. Pure: values in, text out.

Match CSV: one row per point still standing (MATCH_CSV_FIELDS); times ISO-8601 UTC.
Club CSV: one row per ended match (CLUB_CSV_FIELDS); ``games`` as ``11-5 8-11 11-9``.
Names in CSV: a name starting with ``=``, ``+``, ``-``, ``@`` or ``'`` gets one ``'`` in front, so
a spreadsheet shows it as text instead of running it as a formula (OWASP "CSV injection");
``read_*_csv`` take it off again.
Match JSON: ``{"match": <API summary>, "stats": <scorer.stats.match_stats>, "log": [...]}``.
Club JSON: ``{"club": id, "matches": [<API summary>...]}``.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime
from typing import Any

from scorer.record import MatchRow

MATCH_CSV_FIELDS = (
    "match_id", "game_no", "point_no", "won_by", "server", "server_name", "score1", "score2",
    "lead", "at", "seconds",
)  # fmt: skip
CLUB_CSV_FIELDS = (
    "match_id", "table", "status", "started_at", "ended_at", "player1", "player2", "game_type",
    "best_of", "games_won1", "games_won2", "winner", "games", "duration_s",
)  # fmt: skip


FORMULA_STARTS = ("=", "+", "-", "@", "'", "\t", "\r")


def _text_cell(text: str) -> str:
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def _read_text_cell(text: str) -> str:
    return text[1:] if text.startswith("'") else text


def match_document(row: MatchRow, stats: dict[str, Any], log: list[dict[str, Any]]) -> dict:
    return {"match": row.as_json(), "stats": stats, "log": log}


def match_json(row: MatchRow, stats: dict[str, Any], log: list[dict[str, Any]]) -> str:
    return json.dumps(match_document(row, stats, log), ensure_ascii=False, indent=1)


def match_csv(stats: dict[str, Any]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(MATCH_CSV_FIELDS)
    for game in stats["games"]:
        for number, point in enumerate(game["points"], start=1):
            writer.writerow(
                [
                    stats["match_id"], game["game_no"], number, point["side"], point["server"],
                    _text_cell(point["server_name"]), point["score"][0], point["score"][1], point["lead"],
                    _iso_ms(point["at"]), point["seconds"],
                ]
            )  # fmt: skip
    return out.getvalue()


def read_match_csv(text: str) -> list[dict[str, Any]]:
    """A match CSV back into rows (numbers as numbers)."""
    rows = []
    for row in csv.DictReader(io.StringIO(text)):
        for key in ("game_no", "point_no", "won_by", "server", "score1", "score2", "lead"):
            row[key] = int(row[key])
        row["seconds"] = float(row["seconds"])
        row["server_name"] = _read_text_cell(row["server_name"])
        rows.append(row)
    return rows


def club_json(club_id: str, rows: list[MatchRow]) -> str:
    return json.dumps(
        {"club": club_id, "matches": [row.as_json() for row in rows]}, ensure_ascii=False, indent=1
    )


def club_csv(rows: list[MatchRow]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CLUB_CSV_FIELDS)
    for row in rows:
        data = row.as_json()
        writer.writerow(
            [
                row.match_id, row.table or "", row.status, data["started_at"],
                data["ended_at"] or "", _text_cell(row.players[0]), _text_cell(row.players[1]),
                data["game_type"],
                row.best_of, row.games_won[0], row.games_won[1], row.winner or "",
                " ".join(f"{a}-{b}" for a, b in row.games), row.duration_s,
            ]
        )  # fmt: skip
    return out.getvalue()


def read_club_csv(text: str) -> list[dict[str, Any]]:
    """A club CSV back into the API's summary shape (docs/api.md)."""
    matches = []
    for row in csv.DictReader(io.StringIO(text)):
        matches.append(
            {
                "match_id": row["match_id"],
                "table": row["table"] or None,
                "status": row["status"],
                "started_at": row["started_at"],
                "ended_at": row["ended_at"] or None,
                "players": [_read_text_cell(row["player1"]), _read_text_cell(row["player2"])],
                "game_type": row["game_type"],
                "best_of": int(row["best_of"]),
                "games_won": [int(row["games_won1"]), int(row["games_won2"])],
                "winner": int(row["winner"]) if row["winner"] else None,
                "games": [[int(n) for n in g.split("-")] for g in row["games"].split()],
                "duration_s": float(row["duration_s"]),
            }
        )
    return matches


def _iso_ms(at: float) -> str:
    moment = datetime.fromtimestamp(at, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
