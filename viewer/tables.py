"""A club's tables as the pages show them (issue 12, docs/protocol.md "Tables"): each table's
name in the page's language and its topics, and the table a page's ``?table=`` asks for.

Table 1 is ``clubs/<club>/game[/cmd|/reply]``, table n >= 2 ``clubs/<club>/tables/<n>/game``;
the names of the topics come from scorer/topics.py only, so the browser never builds one."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from scorer import topics
from scorer.config import Club


class BadTable(ValueError):
    """``?table=`` names no table of the club: ``status`` 400 (not a table number) or 404 (a
    number beyond the club's tables); ``problems`` say what to write instead (page words)."""

    def __init__(self, status: int, title: str, problems: list[str], links: list[tuple]) -> None:
        super().__init__(title)
        self.status, self.title, self.problems, self.links = status, title, problems, links


def table_label(club: Club, table: int, words: Mapping[str, str]) -> str:
    """The table's configured name (``table_names``), else "Table <n>" in the page's words."""
    if table <= len(club.table_names) and club.table_names[table - 1]:
        return club.table_names[table - 1]
    return words["table_n"].format(n=table)


def record_table_label(club: Club, table_id: Any, words: Mapping[str, str]) -> str:
    """The name shown for a record's ``table_id`` (the table number as stored, text or int);
    "" when the record has none; a value that is not a table number is shown as it is."""
    if table_id is None or table_id == "":
        return ""
    try:
        number = topics.check_table(table_id if isinstance(table_id, int) else str(table_id))
    except topics.BadTable:
        return str(table_id)
    return table_label(club, number, words)


def shows_table_column(club: Club | None, table_ids: Iterable[Any]) -> bool:
    """Whether a list of matches names their tables: when the club plays on several tables, or
    a listed match was played on a table other than 1 (the club had more tables then). A
    one-table club's list stays as it was before tables (record.js follows the same rule)."""
    if club is not None and club.tables > 1:
        return True
    return any(t is not None and str(t) not in ("", "1") for t in table_ids)


def table_topics(club: Club, table: int) -> dict[str, str]:
    return {
        "game": topics.game(club.id, table),
        "cmd": topics.commands(club.id, table),
        "reply": topics.replies(club.id, table),
    }


def club_tables(club: Club, words: Mapping[str, str]) -> list[dict[str, Any]]:
    """``[{"table": n, "name": str, "topics": {"game", "cmd", "reply"}}]``, tables 1..N in
    order: what a page's config block carries."""
    return [
        {"table": n, "name": table_label(club, n, words), "topics": table_topics(club, n)}
        for n in range(1, club.tables + 1)
    ]


def chosen_table(club: Club, query: Mapping[str, str], words: Mapping[str, str]) -> int | None:
    """The table of ``?table=``: None when the URL gives none; raises :class:`BadTable` for a
    value that is not a whole number 1-64 written plainly (400) or a table the club does not
    have (404)."""
    given = query.get("table")
    if given is None:
        return None
    links = [(table_label(club, n, words), f"?table={n}") for n in range(1, club.tables + 1)]
    try:
        table = topics.check_table(given)
    except topics.BadTable:
        problem = words["bad_table_value"].format(count=club.tables)
        raise BadTable(400, words["bad_table"], [problem], links) from None
    if table > club.tables:
        text = words["no_table_text"].format(club=club.name, count=club.tables, n=table)
        raise BadTable(404, words["no_table"], [text], links)
    return table
