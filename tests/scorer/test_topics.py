import pytest

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
