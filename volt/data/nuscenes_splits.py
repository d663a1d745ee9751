"""The standard nuScenes scene splits, carried as data (spec §5 item 8: no nuscenes-devkit needed).

Which scene names belong to which split is a published fact of the dataset (the devkit's
`nuscenes/utils/splits.py`). v1.0-trainval has 700 train and 150 val scenes, v1.0-test 150 test scenes,
v1.0-mini its own 8 + 2. The scene numbers come in long consecutive runs, so each list is written as
runs of numbers ("12-18" = scene-0012 … scene-0018) and expanded once on import.

Output: `SPLITS[version][split] -> tuple of scene names`, and `split_of(version, scene_name)`.
"""

from __future__ import annotations

_TRAIN_RUNS = """
1-2, 4-11, 19-34, 41-76, 120-135, 138-139, 149-152, 154-155, 157-168, 170-185, 187-188, 190-196, 199-200,
202-204, 206-214, 218-220, 222, 224-264, 283-306, 315-318, 321, 323-324, 328, 347-386, 388-403, 405-408,
410-459, 461-465, 467-469, 471-472, 474-480, 499-502, 504-515, 517-518, 525-539, 541-546, 566, 568, 570-578,
580, 582-600, 639-679, 681, 683-689, 695-698, 700-701, 703-719, 726-728, 730-731, 733-741, 744, 746-747,
749-752, 757-765, 767-769, 786-787, 789-792, 803-806, 808-813, 815-817, 819-822, 847-856, 858, 860-866,
868-873, 875-878, 880, 882-903, 945, 947, 949, 952-953, 955-961, 975-984, 988-992, 994-1025, 1044-1058,
1074-1102, 1104-1110
"""

_VAL_RUNS = """
3, 12-18, 35-36, 38-39, 92-110, 221, 268-278, 329-332, 344-346, 519-524, 552-565, 625-627, 629-630, 632-638,
770-771, 775, 777-778, 780-784, 794-800, 802, 904-917, 919-931, 962-963, 966-969, 971-972, 1059-1073
"""

_TEST_RUNS = """
77-91, 111-119, 140, 142-148, 265-266, 279-282, 307-314, 333-343, 481-498, 547-551, 601-604, 606-624,
827-831, 833-842, 844-846, 932-933, 935-943, 1026-1043
"""

_MINI_TRAIN_RUNS = "61, 553, 655, 757, 796, 1077, 1094, 1100"
_MINI_VAL_RUNS = "103, 916"


def _expand(runs: str) -> tuple[str, ...]:
    """'3, 12-14' -> ('scene-0003', 'scene-0012', 'scene-0013', 'scene-0014')."""
    names: list[str] = []
    for part in runs.replace("\n", " ").split(","):
        lo, _, hi = part.strip().partition("-")
        for number in range(int(lo), int(hi or lo) + 1):
            names.append(f"scene-{number:04d}")
    return tuple(names)


TRAIN = _expand(_TRAIN_RUNS)  # 700 scenes
VAL = _expand(_VAL_RUNS)  # 150 scenes
TEST = _expand(_TEST_RUNS)  # 150 scenes
MINI_TRAIN = _expand(_MINI_TRAIN_RUNS)  # 8 scenes
MINI_VAL = _expand(_MINI_VAL_RUNS)  # 2 scenes

# version -> output split folder -> scene names. v1.0-mini keeps the devkit's split names' meaning
# (mini_train / mini_val) but lands in the ordinary train / val folders, so one dataset config fits both.
SPLITS: dict[str, dict[str, tuple[str, ...]]] = {
    "v1.0-trainval": {"train": TRAIN, "val": VAL},
    "v1.0-mini": {"train": MINI_TRAIN, "val": MINI_VAL},
    "v1.0-test": {"test": TEST},
}
VERSIONS = tuple(SPLITS)
_SPLIT_OF = {v: {name: split for split, names in s.items() for name in names} for v, s in SPLITS.items()}


def split_of(version: str, scene_name: str) -> str | None:
    """The output split ('train', 'val' or 'test') of a scene in `version`, or None if it is in none."""
    if version not in SPLITS:
        raise ValueError(f"unknown nuScenes version '{version}' (known: {', '.join(VERSIONS)})")
    return _SPLIT_OF[version].get(scene_name)
