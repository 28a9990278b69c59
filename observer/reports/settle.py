"""Settling, the first step of `observer reconcile`: open sessions that no observer has
confirmed present for a while, and whose participant the LiveKit server no longer has."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from observer import livekit_api
from observer.config import LiveKitSettings
from observer.db.reads import StaleSession
from observer.errors import CommandError

LIVEKIT_TIMEOUT_S = 10.0
LIST_ROOMS_BATCH = 100


@dataclass(frozen=True)
class LiveRoom:
    sid: str
    participant_sids: frozenset[str]


def gone(stale: Iterable[StaleSession], live: Mapping[str, LiveRoom]) -> list[StaleSession]:
    """The sessions whose participant is no longer in its room (or whose room has ended,
    perhaps re-created since under the same name with a new sid)."""
    out = []
    for s in stale:
        room = live.get(s.room_name)
        if room is None or room.sid != s.room_sid or s.participant_sid not in room.participant_sids:
            out.append(s)
    return out


async def live_rooms(lk: LiveKitSettings, names: Collection[str]) -> dict[str, LiveRoom]:
    """The rooms among `names` that exist now and who is in them (ListRooms, then
    ListParticipants per room). With no names, only checks that the server answers."""
    import aiohttp
    from livekit import api

    lkapi = livekit_api.client(lk, LIVEKIT_TIMEOUT_S)
    wanted = sorted(names)
    try:
        sids: dict[str, str] = {}
        for i in range(0, max(len(wanted), 1), LIST_ROOMS_BATCH):
            batch = wanted[i : i + LIST_ROOMS_BATCH]
            resp = await lkapi.room.list_rooms(api.ListRoomsRequest(names=batch))
            sids.update({r.name: r.sid for r in resp.rooms if r.name in names})
        rooms = {}
        for name, sid in sids.items():
            if await livekit_api.room_hosted(lkapi, name) is False:
                # listed, but its node died: nobody listed in it is there any more
                continue
            who = await lkapi.room.list_participants(api.ListParticipantsRequest(room=name))
            rooms[name] = LiveRoom(sid, frozenset(p.sid for p in who.participants))
        return rooms
    except api.TwirpError as exc:
        hint = " (check LIVEKIT_API_KEY / LIVEKIT_API_SECRET)" if exc.status in (401, 403) else ""
        raise CommandError(
            f"livekit refused the room listing at {lkapi.http_url}: {exc.code}: {exc.message}{hint}"
        ) from None
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise CommandError(
            f"livekit unreachable at {', '.join(lk.urls)}: {type(exc).__name__}: {exc}"
        ) from None
    finally:
        await lkapi.aclose()


@dataclass(frozen=True)
class SettleSummary:
    skipped: str | None = None  # why settling did not run
    stale: int = 0  # open sessions not confirmed present within the staleness threshold
    gone: int = 0  # of those, the ones whose participant LiveKit no longer has
    closed: int = 0  # rows closed (fewer if the daemon closed or saw some meanwhile)
