"""The pages' words in English and Russian, and how a request picks its language.

Order: ``?lang=`` (remembered in a cookie), the cookie, the browser's Accept-Language, English.
Strings the browser needs at run time (banners, states, the scorer's messages) go to the page
in its config block; the rest are rendered by the templates."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

LANGUAGES = ("en", "ru")
DEFAULT_LANGUAGE = "en"
LANG_COOKIE = "rallycast_lang"

STRINGS: dict[str, dict[str, str]] = {
    "en": {
        "clubs": "Clubs",
        "live_on": "Live",
        "heading_friendly": "Friendly game",
        "heading_match": "Match, best of {n}",
        "heading_finished": "Finished: won by {name}",
        "heading_abandoned": "Abandoned",
        "best_of_n": "Best of {n}",
        "games_won": "Games",
        "won_by": "Match won by {name}",
        "won_by_pair": "Match won by {name}",
        "game_to": "Game {n} to {name}, {score}",
        "game_to_pair": "Game {n} to {name}, {score}",
        "interval": "Interval",
        "timeout_side": "Timeout – {name}",
        "change_ends": "Change ends",
        "change_ends_pads": "Change ends: the pads have swapped with the players",
        "serves_to": "{server} serves to {receiver}",
        "serves_one": "{server} serves",
        "final_game": "Final game: {score}",
        "result_games": "Games: {games}",
        "redo": "Redo",
        "full_screen": "Full screen",
        "pending": "Pending…",
        "queued": "Queued",
        "waiting": "waiting for the reply",
        "press_plus": "+1 {name}",
        "press_minus": "−1 {name}",
        "press_undo": "Undo",
        "press_redo": "Redo",
        "press_timeout": "Timeout {name}",
        "press_expedite": "Expedite",
        "press_end": "End match",
        "press_start": "Start match",
        "no_answer": "No answer from the scorer service for {s} s: still trying",
        "gave_up": "No answer for {s} s: the press is kept; it goes again on reconnect or with Send again",
        "retry": "Send again",
        "drop_queue": "Forget waiting presses",
        "partner_missing": "Both players of each pair need a name.",
        "scorer_stalled": "The scorer service is not applying commands right now",
        "overlay_help": "Overlay options",
        "ov_intro": "Add the overlay to OBS (or any streaming tool) as a browser source with this address; its background is transparent. These URL options change its look:",
        "ov_param": "Option",
        "ov_meaning": "What it sets",
        "ov_default": "Default",
        "ov_pos": "where the score sits: {values}",
        "ov_scale": "size, a number from {low} to {high} (2 = twice as big)",
        "ov_bg": "background colour: #rgb, #rgba, #rrggbb, #rrggbbaa or a colour name (a-z)",
        "ov_fg": "text colour (same forms)",
        "ov_accent": "colour of the points and the serve dot (same forms)",
        "ov_examples": "Examples",
        "ov_bad": "An option that is not valid shows an error page listing what is wrong, instead of the overlay.",
        "no_match": "No match right now",
        "serves": "serves",
        "games": "Games",
        "game_scores": "Game scores",
        "game_no": "Game {n}",
        "between_games": "Between games",
        "abandoned": "Match abandoned",
        "reconnecting": "Connection lost: reconnecting…",
        "scorer_offline": "The scorer service is offline: scores may be stale",
        "mqtt_missing": "run ./dev up (npm ci) — mqtt.js missing",
        "no_club": "No such club",
        # Sound, speech, notifications and the QR code (viewer/static/announce*.js, embed.py).
        "sound": "Sound",
        "speech": "Speak the score",
        "notify": "Notify me",
        "qr_title": "Open the club page on your phone",
        "embed_link": "On your website",
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
        "signed_out": "This phone is signed out (the device was revoked or the password changed): enter the password again.",
        "too_many_attempts": "Too many sign-ins from here: wait a minute and try again.",
        "sign_in_failed": "Could not sign in: {reason}",
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
        "language": "Language",
    },
    "ru": {
        "clubs": "Клубы",
        "live_on": "В эфире",
        "heading_friendly": "Товарищеская партия",
        "heading_match": "Матч из {n} партий",
        "heading_finished": "Завершён: победа — {name}",
        "heading_abandoned": "Матч прерван",
        "best_of_n": "Матч из {n} партий",
        "games_won": "Партии",
        "won_by": "Матч выиграл(а) {name}",
        "won_by_pair": "Матч выиграли {name}",
        "game_to": "Партию {n} выиграл(а) {name}, {score}",
        "game_to_pair": "Партию {n} выиграли {name}, {score}",
        "interval": "Перерыв",
        "timeout_side": "Тайм-аут – {name}",
        "change_ends": "Смена сторон",
        "change_ends_pads": "Смена сторон: кнопки поменялись местами вместе с игроками",
        "serves_to": "{server} подаёт, принимает {receiver}",
        "serves_one": "{server} подаёт",
        "final_game": "Последняя партия: {score}",
        "result_games": "Партии: {games}",
        "redo": "Вернуть",
        "full_screen": "Полный экран",
        "pending": "Ожидание…",
        "queued": "В очереди",
        "waiting": "ждёт ответа",
        "press_plus": "+1 {name}",
        "press_minus": "−1 {name}",
        "press_undo": "Отмена",
        "press_redo": "Вернуть",
        "press_timeout": "Тайм-аут {name}",
        "press_expedite": "Ускорение",
        "press_end": "Завершить матч",
        "press_start": "Начать игру",
        "no_answer": "Сервис счёта не отвечает {s} с: пробуем ещё",
        "gave_up": "Нет ответа {s} с: нажатие сохранено и уйдёт снова после переподключения или по кнопке «Отправить снова»",
        "retry": "Отправить снова",
        "drop_queue": "Забыть ожидающие нажатия",
        "partner_missing": "У обоих игроков каждой пары должно быть имя.",
        "scorer_stalled": "Сервис счёта сейчас не применяет команды",
        "overlay_help": "Параметры оверлея",
        "ov_intro": "Добавьте оверлей в OBS (или другую программу трансляции) как источник «Браузер» с этим адресом; фон у него прозрачный. Вид меняют параметры адреса:",
        "ov_param": "Параметр",
        "ov_meaning": "Что задаёт",
        "ov_default": "По умолчанию",
        "ov_pos": "где стоит счёт: {values}",
        "ov_scale": "размер, число от {low} до {high} (2 — вдвое больше)",
        "ov_bg": "цвет фона: #rgb, #rgba, #rrggbb, #rrggbbaa или название цвета (a-z)",
        "ov_fg": "цвет текста (в тех же формах)",
        "ov_accent": "цвет очков и точки подачи (в тех же формах)",
        "ov_examples": "Примеры",
        "ov_bad": "Если параметр неверен, вместо оверлея открывается страница с перечнем ошибок.",
        "no_match": "Сейчас игры нет",
        "serves": "подаёт",
        "games": "Партии",
        "game_scores": "Счёт партий",
        "game_no": "Партия {n}",
        "between_games": "Перерыв между партиями",
        "abandoned": "Матч прерван",
        "reconnecting": "Связь потеряна: переподключение…",
        "scorer_offline": "Сервис счёта не в сети: счёт может быть устаревшим",
        "mqtt_missing": "запустите ./dev up (npm ci) — нет mqtt.js",
        "no_club": "Нет такого клуба",
        "sound": "Звук",
        "speech": "Озвучивать счёт",
        "notify": "Уведомления",
        "qr_title": "Страница клуба на телефоне",
        "embed_link": "На сайт клуба",
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
        "signed_out": "Этот телефон вышел из системы (устройство отозвано или пароль сменён): введите пароль снова.",
        "too_many_attempts": "Слишком много попыток входа отсюда: подождите минуту и попробуйте снова.",
        "sign_in_failed": "Не удалось войти: {reason}",
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
        "language": "Язык",
    },
}

# Refusal reasons by the reply's machine-readable ``code`` (docs/protocol.md); a code that is
# not here shows the reply's English ``error``. ``{name}``-style fields come from ``params``.
REFUSALS: dict[str, dict[str, str]] = {
    "en": {
        "match_over": "the match is over",
        "no_point_to_remove": "side {side} has no point to take back in game {game_no}",
        "timeout_used": "that side has had its timeout",
        "timeout_between_games": "a timeout is only possible during a game",
        "nothing_to_undo": "nothing to undo",
        "nothing_to_redo": "nothing to redo",
        "no_match": "no match has started",
        "match_in_progress": "a match is in progress",
        "wrong_match": "the match changed on another device: check the score",
        "bad_command": "the service did not understand the command",
        "too_large": "the command is too large",
        "retained_command": "a retained command is not accepted",
        "store_failed": "the service could not save it: try again",
        "id_reused": "this press's id was already used for another command: press again",
        "no_such_table": "the club has no table {table} (it has {tables})",
        "internal_error": "the service failed on it: try again",
        "expedite_on": "the expedite system is already on",
        "expedite_too_late": "too late in the game for the expedite system (18 points played)",
        "match_abandoned": "the match was abandoned",
        "unknown_player": "there is no such player in this match",
        "not_doubles": "only in doubles",
        "server_choice_too_late": "the first server can only be chosen before a game starts",
        "not_in_serving_pair": "that player is not in the pair due to serve",
        "same_side": "the server and the receiver must be on different sides",
        "points_after_match_end": "that -1 would leave points after the end of the match: use Undo",
        "later_change_conflicts": "that -1 clashes with a later press: use Undo",
    },
    "ru": {
        "match_over": "матч окончен",
        "no_point_to_remove": "у стороны {side} нет очка, которое можно снять, в партии {game_no}",
        "timeout_used": "эта сторона уже брала тайм-аут",
        "timeout_between_games": "тайм-аут возможен только во время партии",
        "nothing_to_undo": "нечего отменять",
        "nothing_to_redo": "нечего возвращать",
        "no_match": "матч не начат",
        "match_in_progress": "идёт матч",
        "wrong_match": "матч сменился на другом устройстве: проверьте счёт",
        "bad_command": "сервис не понял команду",
        "too_large": "команда слишком длинная",
        "retained_command": "сохраняемая (retained) команда не принимается",
        "store_failed": "сервис не смог сохранить команду: попробуйте ещё раз",
        "id_reused": "этот номер нажатия уже занят другой командой: нажмите ещё раз",
        "no_such_table": "в клубе нет стола {table} (столов: {tables})",
        "internal_error": "ошибка сервиса: попробуйте ещё раз",
        "expedite_on": "система ускорения уже включена",
        "expedite_too_late": "слишком поздно для системы ускорения (сыграно 18 очков)",
        "match_abandoned": "матч прерван",
        "unknown_player": "в этом матче нет такого игрока",
        "not_doubles": "только в парной игре",
        "server_choice_too_late": "первого подающего выбирают до начала партии",
        "not_in_serving_pair": "этот игрок не из подающей пары",
        "same_side": "подающий и принимающий должны быть с разных сторон",
        "points_after_match_end": "это −1 оставит очки после конца матча: используйте «Отменить»",
        "later_change_conflicts": "это −1 противоречит более позднему нажатию: используйте «Отменить»",
    },
}

# Keys the browser needs (live.js and score.js); the rest stay on the server.
BROWSER_KEYS = (
    "no_match", "serves", "game_no", "between_games", "won_by", "abandoned", "reconnecting",
    "scorer_offline", "wrong_password", "signed_out", "too_many_attempts", "sign_in_failed",
    "connecting", "confirm_end", "sent", "accepted",
    "refused", "no_reply", "end_match", "live_on", "heading_friendly", "heading_match",
    "heading_finished", "heading_abandoned", "best_of_n", "won_by_pair", "game_to",
    "game_to_pair", "interval", "timeout_side", "change_ends", "change_ends_pads", "serves_to",
    "serves_one", "final_game", "result_games", "pending", "queued", "waiting", "press_plus",
    "press_minus", "press_undo", "press_redo", "press_timeout", "press_expedite", "press_end",
    "press_start", "no_answer", "gave_up", "partner_missing", "scorer_stalled", "games_won",
)  # fmt: skip


def _add_strings(block: dict[str, dict[str, str]]) -> None:
    """Adds one feature's words to STRINGS, language by language."""
    for language, words in block.items():
        STRINGS[language].update(words)


# The record of play (viewer/record.py: matches, match, player pages; the club page's
# "Recent results" and ladder).
_RECORD_STRINGS: dict[str, dict[str, str]] = {
    "en": {
        "matches_title": "Matches",
        "recent_results": "Recent results",
        "all_matches": "All matches",
        "no_matches": "No finished matches yet.",
        "filter_player": "Player",
        "filter": "Show",
        "when": "Date",
        "table": "Table",
        "players": "Players",
        "result": "Result",
        "duration": "Duration",
        "abandoned_short": "abandoned",
        "pages": "Pages",
        "newer": "Newer",
        "older": "Older",
        "page_of": "Page {n} of {total}",
        "download": "Download",
        "game": "Game",
        "point_by_point": "Point by point",
        "chart_title": "Game {n}: the lead after each point",
        "chart_legend": "above the line: the first player leads; the bar under each point: who served; T1/T2: timeout; E: expedite system",
        "served": "Serve",
        "statistics": "Statistics",
        "points_won": "Points won",
        "won_on_serve": "Won on own serve",
        "won_on_receive": "Won on receive",
        "longest_run": "Longest run",
        "lead_overcome": "Largest lead overcome",
        "deuce_games": "Games to 10-10",
        "time_per_point": "Time per point",
        "rating": "Rating",
        "ladder": "Ladder",
        "ladder_place": "place {n} on the ladder",
        "won_of": "won {won} of {played}",
        "head_to_head": "Head to head",
        "opponent": "Opponent",
        "won": "Won",
        "lost": "Lost",
    },
    "ru": {
        "matches_title": "Матчи",
        "recent_results": "Последние результаты",
        "all_matches": "Все матчи",
        "no_matches": "Завершённых матчей пока нет.",
        "filter_player": "Игрок",
        "filter": "Показать",
        "when": "Дата",
        "table": "Стол",
        "players": "Игроки",
        "result": "Счёт",
        "duration": "Длительность",
        "abandoned_short": "прерван",
        "pages": "Страницы",
        "newer": "Новее",
        "older": "Старше",
        "page_of": "Страница {n} из {total}",
        "download": "Скачать",
        "game": "Партия",
        "point_by_point": "По очкам",
        "chart_title": "Партия {n}: разница в счёте после каждого очка",
        "chart_legend": "выше линии ведёт первый игрок; полоска под очком — кто подавал; T1/T2 — тайм-аут; E — правило ускорения",
        "served": "Подача",
        "statistics": "Статистика",
        "points_won": "Выиграно очков",
        "won_on_serve": "Выиграно на своей подаче",
        "won_on_receive": "Выиграно на приёме",
        "longest_run": "Самая длинная серия",
        "lead_overcome": "Наибольшее отставание, которое удалось отыграть",
        "deuce_games": "Партий до 10:10",
        "time_per_point": "Время на очко",
        "rating": "Рейтинг",
        "ladder": "Рейтинг клуба",
        "ladder_place": "{n}-е место в рейтинге",
        "won_of": "выиграно {won} из {played}",
        "head_to_head": "Личные встречи",
        "opponent": "Соперник",
        "won": "Победы",
        "lost": "Поражения",
    },
}
_add_strings(_RECORD_STRINGS)

# Tables (issue 12): the club page's card per table, ?table= on the display, overlay and
# scorer pages, the scorer's choice of table. One block, so that merges stay easy.
_TABLE_STRINGS: dict[str, dict[str, str]] = {
    "en": {
        "table_n": "Table {n}",
        "pick_table": "Table",
        "table_busy": "Send or forget the waiting presses before changing tables.",
        "bad_table": "Bad table",
        "bad_table_value": "table: a table number from 1 to {count}, e.g. ?table=2",
        "no_table": "No such table",
        "no_table_text": "{club} has {count} table(s); there is no table {n}. Its tables:",
        "ov_table": "which of the club's tables it shows: 1 to {count}",
    },
    "ru": {
        "table_n": "Стол {n}",
        "pick_table": "Стол",
        "table_busy": "Отправьте или забудьте ждущие нажатия, прежде чем сменить стол.",
        "bad_table": "Неверный стол",
        "bad_table_value": "table: номер стола от 1 до {count}, например ?table=2",
        "no_table": "Нет такого стола",
        "no_table_text": "У клуба {club} столов: {count}; стола {n} нет. Столы клуба:",
        "ov_table": "какой стол клуба показывать: от 1 до {count}",
    },
}
_add_strings(_TABLE_STRINGS)
BROWSER_KEYS += ("table_busy",)


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


def browser_strings(language: str) -> dict[str, Any]:
    strings: dict[str, Any] = {key: STRINGS[language][key] for key in BROWSER_KEYS}
    strings["codes"] = dict(REFUSALS[language])
    return strings
