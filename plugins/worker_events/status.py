"""What worker_events shows of itself: per ring, its fill and counters and how far each
worker's delivery is behind (the API's ``workers`` array and the ``ngxsim_status`` hook)."""

from __future__ import annotations

from .ring import Ring


def worker_rows(ring: Ring, newest: int) -> list[dict]:
    """Every live worker's delivery state for ``ring``: ``lag`` is how many generations its
    dispatcher is behind ``newest``; ``lost_events`` were overwritten before it delivered them."""
    return [
        {
            "pid": s.pid,
            "subscribers": s.subscribers,
            # a worker where no module listens has nothing to deliver: never behind
            "delivered_generation": s.delivered if s.subscribers else newest,
            "lag": max(0, newest - s.delivered) if s.subscribers else 0,
            "gaps": s.gaps,
            "lost_events": s.lost,
            "events_delivered": s.events,
            "wakeups": s.wakeups,
            "last_delivery_msec": s.last_delivery_msec,
        }
        for s in ring.live_slots()
    ]


def ring_status(ring: Ring) -> dict:
    """One ring at a glance (the ``ngxsim_status`` hook's entry for its zone)."""
    newest, dropped, last_publish = ring.control()
    used = min(newest, ring.capacity)
    workers = worker_rows(ring, newest)
    return {
        "capacity": ring.capacity,
        "used": used,
        "fill_percent": round(100 * used / ring.capacity, 1),
        "oldest_generation": ring.oldest_for(newest),
        "newest_generation": newest,
        "dropped_events": dropped,
        "lost_events": sum(w["lost_events"] for w in workers),
        "max_lag": max((w["lag"] for w in workers), default=0),
        "last_publish_msec": last_publish or None,
        "workers": workers,
    }
