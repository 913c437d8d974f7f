"""Generated attendees for networking events: profiles that look like people's.

Embeddings are drawn around a few dozen "kinds of people" (cluster centres) rather
than uniformly, so that similar attendees exist and scores spread over [0, 1] as
they do with real sentence embeddings; interests follow a long tail, as real ones do.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["INTERESTS", "attendee_profiles"]

INTERESTS = (
    "hiking",
    "llms",
    "rust",
    "python",
    "go",
    "kubernetes",
    "kafka",
    "chess",
    "climbing",
    "cycling",
    "photography",
    "jazz",
    "cooking",
    "coffee",
    "startups",
    "design",
    "ux",
    "security",
    "databases",
    "robotics",
    "gardening",
    "running",
    "yoga",
    "sailing",
    "board-games",
    "sci-fi",
    "podcasts",
    "writing",
    "music-production",
    "drones",
    "open-source",
    "compilers",
    "data-science",
    "mlops",
    "typescript",
    "web3",
    "bouldering",
    "skiing",
    "travel",
    "languages",
    "volunteering",
    "painting",
)
_ROLES = ("engineer", "researcher", "founder", "designer", "student", "manager")
_OPINIONS = (
    "remote work is great for deep work",
    "open source should be funded by companies",
    "large language models are overhyped",
    "large language models will change programming",
    "offices help teams learn faster",
    "static typing saves time",
    "meetups beat conferences",
)
_FACTS = (
    "I live in {city}",
    "I moved to {city} last year",
    "I have two cats",
    "I run a small {topic} meetup",
    "I am learning {topic}",
)
_CITIES = ("Berlin", "Lisbon", "London", "Paris", "Warsaw", "Zurich")


def attendee_profiles(
    count: int, *, dimensions: int = 384, seed: int = 0, texts: bool = False
) -> list[dict[str, Any]]:
    """`count` profiles as JSON-ready dicts (`models.messages.Profile` fields).

    Args:
        count: how many attendees.
        dimensions: embedding length; 0 leaves embeddings out.
        seed: the same seed gives the same attendees.
        texts: add `facts` and `opinions`.

    Example:
        >>> sorted(attendee_profiles(1, dimensions=4)[0])
        ['attributes', 'embedding', 'interests']
    """
    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, len(INTERESTS) + 1)
    popularity /= popularity.sum()
    embeddings = np.zeros((count, 0))
    if dimensions:
        centres = rng.standard_normal((max(4, min(64, count // 20)), dimensions))
        kinds = rng.integers(0, len(centres), count)
        embeddings = centres[kinds] + 0.9 * rng.standard_normal((count, dimensions))
        embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    profiles: list[dict[str, Any]] = []
    for number in range(count):
        picked = rng.choice(len(INTERESTS), int(rng.integers(2, 7)), replace=False, p=popularity)
        profile: dict[str, Any] = {
            "interests": [INTERESTS[index] for index in sorted(picked)],
            "attributes": {"role": _ROLES[int(rng.integers(len(_ROLES)))]},
        }
        if dimensions:
            profile["embedding"] = np.round(embeddings[number], 4).tolist()
        if texts:
            topic = INTERESTS[int(picked[0])]
            city = _CITIES[int(rng.integers(len(_CITIES)))]
            facts = rng.choice(len(_FACTS), 2, replace=False)
            profile["facts"] = [_FACTS[int(i)].format(city=city, topic=topic) for i in facts]
            opinions = rng.choice(len(_OPINIONS), 2, replace=False)
            profile["opinions"] = [_OPINIONS[int(i)] for i in opinions]
        profiles.append(profile)
    return profiles
