import pytest
from hypothesis import given
from hypothesis import strategies as st

from scorer import topics


def test_topic_names_follow_the_protocol():
    assert topics.game("riverside") == "clubs/riverside/game"
    assert topics.commands("riverside") == "clubs/riverside/game/cmd"
    assert topics.replies("riverside") == "clubs/riverside/game/reply"
    assert topics.events("riverside") == "clubs/riverside/game/events"


@pytest.mark.parametrize("club_id", ["", "+", "#", "a/b", "UPPER", "x" * 65, "a b"])
def test_unsafe_club_ids_are_refused(club_id):
    with pytest.raises(topics.BadClubId):
        topics.game(club_id)


@pytest.mark.parametrize(
    "topic, club",
    [
        ("clubs/riverside/game/cmd", "riverside"),
        ("clubs/riverside/game", "riverside"),
        ("clubs/+/game/cmd", None),
        ("clubs//game/cmd", None),
        ("clubs/riverside/other", None),
        ("other/riverside/game", None),
    ],
)
def test_club_of_reads_only_valid_club_levels(topic, club):
    assert topics.club_of(topic) == club


def test_table_one_keeps_the_original_topics_and_other_tables_live_under_tables():
    assert topics.game("riverside", 1) == "clubs/riverside/game"
    assert topics.game("riverside", 2) == "clubs/riverside/tables/2/game"
    assert topics.commands("riverside", 12) == "clubs/riverside/tables/12/game/cmd"
    assert topics.replies("riverside", 3) == "clubs/riverside/tables/3/game/reply"
    assert topics.events("riverside", 3) == "clubs/riverside/tables/3/game/events"
    assert topics.club_game_filters("riverside") == [
        "clubs/riverside/game",
        "clubs/riverside/tables/+/game",
    ]


@pytest.mark.parametrize("table", [0, -1, topics.MAX_TABLES + 1, True, 1.0, "02", " 2", "+2", None])
def test_bad_table_numbers_are_refused(table):
    with pytest.raises(topics.BadTable):
        topics.game("riverside", table)


@pytest.mark.parametrize(
    "topic",
    [
        "clubs/riverside/tables/1/game",  # table 1 has exactly one topic: clubs/<club>/game
        "clubs/riverside/tables/01/game/cmd",
        "clubs/riverside/tables/0/game",
        f"clubs/riverside/tables/{topics.MAX_TABLES + 1}/game",
        "clubs/riverside/tables/+/game/cmd",
        "clubs/riverside/tables/2/game/other",
        "clubs/riverside/tables/2",
        "clubs/riverside/game/cmd/extra",
    ],
)
def test_table_of_refuses_topics_outside_the_scheme(topic):
    assert topics.table_of(topic) is None
    assert topics.club_of(topic) is None


@given(
    club=st.from_regex(topics.CLUB_ID_RE, fullmatch=True),
    table=st.integers(1, topics.MAX_TABLES),
    suffix=st.sampled_from(["", "cmd", "reply", "events"]),
)
def test_every_table_topic_reads_back_as_its_club_table_and_kind(club, table, suffix):
    topic = {
        "": topics.game,
        "cmd": topics.commands,
        "reply": topics.replies,
        "events": topics.events,
    }[suffix](club, table)
    assert topics.table_of(topic) == (club, table, suffix)
    filters = topics.club_game_filters(club)
    if suffix == "":
        # one of the two club filters matches it (MQTT '+' = exactly one level)
        assert any(
            len(f.split("/")) == len(topic.split("/"))
            and all(a in ("+", b) for a, b in zip(f.split("/"), topic.split("/"), strict=True))
            for f in filters
        )


# Text that str.isdigit() takes for digits but int() does not (or not at this length).
ODD_DIGITS = ["\u00b2", "\u00b9\u00b2", "\u0663", "\uff12", "9" * 5000, "0" * 4400 + "2", "2\n"]


@pytest.mark.parametrize("text", ODD_DIGITS)
def test_check_table_refuses_odd_digit_text_with_bad_table(text):
    with pytest.raises(topics.BadTable):
        topics.check_table(text)
    assert topics.table_of(f"clubs/riverside/tables/{text}/game/cmd") is None


@given(st.text(max_size=8) | st.from_regex(r"[0-9]{1,6000}", fullmatch=True))
def test_check_table_raises_nothing_but_bad_table_and_reads_only_plain_numbers(text):
    try:
        number = topics.check_table(text)
    except topics.BadTable:
        return
    assert 1 <= number <= topics.MAX_TABLES and text == str(number)


@given(st.lists(st.text(max_size=6) | st.sampled_from(["clubs", "tables", "game", "cmd"]),
                max_size=7))  # fmt: skip
def test_table_of_never_raises(levels):
    found = topics.table_of("/".join(levels))
    assert found is None or found[0] == levels[1]
