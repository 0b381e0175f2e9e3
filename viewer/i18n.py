"""The pages' words in English and Russian, and how a request picks its language.

Order: ``?lang=`` (remembered in a cookie), the cookie, the browser's Accept-Language, English.
Strings the browser needs at run time (banners, states, the scorer's messages) go to the page
in its config block; the rest are rendered by the templates."""

from __future__ import annotations

from starlette.requests import Request

LANGUAGES = ("en", "ru")
DEFAULT_LANGUAGE = "en"
LANG_COOKIE = "rallycast_lang"

STRINGS: dict[str, dict[str, str]] = {
    "en": {
        "clubs": "Clubs",
        "live_on": "🔴 a friendly game is on",
        "no_match": "No match right now",
        "serves": "serves",
        "games": "Games",
        "game_no": "Game {n}",
        "between_games": "Between games",
        "won_by": "Match won by {name}",
        "abandoned": "Match abandoned",
        "reconnecting": "Connection lost: reconnecting…",
        "scorer_offline": "The scorer service is offline: scores may be stale",
        "mqtt_missing": "run ./dev up (npm ci) — mqtt.js missing",
        "no_club": "No such club",
        "no_club_text": "There is no club with this id on this server.",
        "bad_overlay": "Bad overlay parameters",
        "back_to_clubs": "All clubs",
        "score_link": "Score a match",
        "display_link": "TV display",
        "overlay_link": "Stream overlay",
        "sign_in": "Sign in",
        "sign_out": "Sign out",
        "password": "Scorer password for {club}",
        "wrong_password": "Wrong password: the club's scorer password did not work.",
        "connecting": "Connecting…",
        "start_match": "Start match",
        "new_match": "New match",
        "new_match_force": "A match is in progress: starting replaces it.",
        "back_to_match": "Back to the match",
        "singles": "Singles",
        "doubles": "Doubles",
        "player1": "Player 1",
        "player2": "Player 2",
        "pair1": "Pair 1",
        "pair2": "Pair 2",
        "best_of": "Best of",
        "first_server": "First server",
        "undo": "Undo",
        "timeout": "Timeout",
        "expedite": "Expedite",
        "end_match": "End match",
        "confirm_end": "Tap again to end",
        "sent": "Sent…",
        "accepted": "OK",
        "refused": "Refused: {reason}",
        "no_reply": "No answer from the scorer service yet…",
        "tap_fullscreen": "Tap for full screen",
        "language": "Language",
    },
    "ru": {
        "clubs": "Клубы",
        "live_on": "🔴 Идёт товарищеская партия",
        "no_match": "Сейчас игры нет",
        "serves": "подаёт",
        "games": "Партии",
        "game_no": "Партия {n}",
        "between_games": "Перерыв между партиями",
        "won_by": "Матч выиграл(а) {name}",
        "abandoned": "Матч прерван",
        "reconnecting": "Связь потеряна: переподключение…",
        "scorer_offline": "Сервис счёта не в сети: счёт может быть устаревшим",
        "mqtt_missing": "запустите ./dev up (npm ci) — нет mqtt.js",
        "no_club": "Нет такого клуба",
        "no_club_text": "На этом сервере нет клуба с таким идентификатором.",
        "bad_overlay": "Неверные параметры оверлея",
        "back_to_clubs": "Все клубы",
        "score_link": "Вести счёт",
        "display_link": "Табло для ТВ",
        "overlay_link": "Оверлей для трансляции",
        "sign_in": "Войти",
        "sign_out": "Выйти",
        "password": "Пароль судьи клуба {club}",
        "wrong_password": "Неверный пароль судьи клуба.",
        "connecting": "Подключение…",
        "start_match": "Начать игру",
        "new_match": "Новая игра",
        "new_match_force": "Идёт игра: новая игра заменит её.",
        "back_to_match": "Вернуться к игре",
        "singles": "Одиночная",
        "doubles": "Парная",
        "player1": "Игрок 1",
        "player2": "Игрок 2",
        "pair1": "Пара 1",
        "pair2": "Пара 2",
        "best_of": "Партий в матче (до)",
        "first_server": "Первым подаёт",
        "undo": "Отменить",
        "timeout": "Тайм-аут",
        "expedite": "Ускорение",
        "end_match": "Завершить",
        "confirm_end": "Нажмите ещё раз",
        "sent": "Отправлено…",
        "accepted": "Принято",
        "refused": "Отклонено: {reason}",
        "no_reply": "Сервис счёта пока не ответил…",
        "tap_fullscreen": "Нажмите для полного экрана",
        "language": "Язык",
    },
}

# Keys the browser needs (live.js and score.js); the rest stay on the server.
BROWSER_KEYS = (
    "no_match", "serves", "game_no", "between_games", "won_by", "abandoned", "reconnecting",
    "scorer_offline", "wrong_password", "connecting", "confirm_end", "sent", "accepted",
    "refused", "no_reply", "end_match",
)  # fmt: skip


def _from_accept_language(header: str) -> str | None:
    """The best supported language in an Accept-Language header (RFC 9110 q-values)."""
    choices: list[tuple[float, int, str]] = []
    for index, part in enumerate(header.split(",")):
        tag, _, params = part.strip().partition(";")
        quality = 1.0
        params = params.strip()
        if params.startswith("q="):
            try:
                quality = float(params[2:])
            except ValueError:
                quality = 0.0
        language = tag.strip().lower().split("-")[0]
        if language in LANGUAGES and quality > 0:
            choices.append((-quality, index, language))
    return min(choices)[2] if choices else None


def pick_language(request: Request) -> tuple[str, bool]:
    """(language, whether to remember it in the cookie)."""
    asked = request.query_params.get("lang", "")
    if asked in LANGUAGES:
        return asked, True
    cookie = request.cookies.get(LANG_COOKIE, "")
    if cookie in LANGUAGES:
        return cookie, False
    header = _from_accept_language(request.headers.get("accept-language", ""))
    return header or DEFAULT_LANGUAGE, False


def browser_strings(language: str) -> dict[str, str]:
    return {key: STRINGS[language][key] for key in BROWSER_KEYS}
