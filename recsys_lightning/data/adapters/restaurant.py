"""UCI Restaurant & consumer data: `rating_final.csv` plus the consumer and restaurant tables, `?` = missing.

`rating_final.csv` is required; `userprofile.csv`, `usercuisine.csv`, `userpayment.csv` and `geoplaces2.csv`
(the 130 rated restaurants) must only name rated users/restaurants. The `chefmoz*.csv` tables describe a
larger catalog (about 900 restaurants), so their rows for restaurants nobody rated are skipped. The data has
no timestamps: every rating gets time 0, so each user's order is the seeded hash tie-break.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from recsys_lightning.data.adapters.files import describe, is_int, table_rows
from recsys_lightning.data.schema import DataError, RecData

USER_COLUMNS = ("birth_year", "smoker", "drink_level", "dress_preference", "ambience", "transport", "marital_status",
                "hijos", "interest", "personality", "religion", "activity", "color", "weight", "budget", "height")
PLACE_COLUMNS = {"name": "title", "city": "city", "state": "state", "country": "country", "alcohol": "alcohol",
                 "smoking_area": "smoking_area", "dress_code": "dress_code", "accessibility": "accessibility",
                 "price": "price", "Rambience": "ambience", "franchise": "franchise", "area": "area",
                 "other_services": "other_services"}
# (file, id column, value column, feature, strict: every id must be rated)
LIST_TABLES = (
    ("usercuisine.csv", "userID", "Rcuisine", "cuisines", True),
    ("userpayment.csv", "userID", "Upayment", "payments", True),
    ("chefmozcuisine.csv", "placeID", "Rcuisine", "cuisines", False),
    ("chefmozaccepts.csv", "placeID", "Rpayment", "payments", False),
    ("chefmozparking.csv", "placeID", "parking_lot", "parking", False),
)
TEMPLATES = {
    "user": "{user}[ was born in {birth_year}][, is {marital_status}][, is a {activity}][, has a {budget} budget]"
            "[, drinks: {drink_level}][, smoker: {smoker}][, prefers {dress_preference} dress][, likes a {ambience} "
            "ambience][, travels {transport}][, likes {cuisines} food][, pays with {payments}].",
    "item": "item {item} is a restaurant[ named {title}][ in {city}][, serving {cuisines} food][, {price} price]"
            "[, alcohol: {alcohol}][, smoking: {smoking_area}][, {dress_code} dress code][, {ambience} ambience]"
            "[, parking: {parking}][, accepts {payments}].",
}


def _clean(value: str | None) -> str | None:
    """`No_Alcohol_Served` -> `No Alcohol Served`; missing stays None."""
    return None if value is None else value.replace("_", " ").strip() or None


def _profile(path: Path, id_column: str, columns: dict[str, str], known: set[str]) -> dict[str, dict[str, Any]]:
    """{feature: {id: value}} from a one-row-per-id table whose ids must all be rated."""
    features: dict[str, dict[str, Any]] = {feature: {} for feature in columns.values()}
    for lineno, row in table_rows(path, (id_column, *columns)):
        key = row[id_column]
        if key not in known:
            raise DataError(f"{path}:{lineno}: {id_column} {key!r} has no rating in rating_final.csv")
        for column, feature in columns.items():
            features[feature][key] = _clean(row[column])
    return features


def _lists(root: Path, users: set[str], places: set[str]) -> tuple[dict[str, dict], dict[str, dict]]:
    """Multi-valued features (cuisines, payments, parking) of users and restaurants."""
    out: tuple[dict[str, dict], dict[str, dict]] = ({}, {})
    for name, id_column, value_column, feature, strict in LIST_TABLES:
        path = root / name
        if not path.is_file():
            continue
        known = users if id_column == "userID" else places
        column = out[0 if id_column == "userID" else 1].setdefault(feature, {})
        for lineno, row in table_rows(path, (id_column, value_column)):
            key, value = row[id_column], _clean(row[value_column])
            if key not in known:
                if strict:
                    raise DataError(f"{path}:{lineno}: {id_column} {key!r} has no rating in rating_final.csv")
                continue
            if value is not None and value not in column.setdefault(key, []):
                column[key].append(value)
    return out


def read_restaurant(root: Path, seed: int = 0) -> RecData:
    """Ratings (0-2) with the consumers' profiles and the restaurants' attributes."""
    path = root / "rating_final.csv"
    if not path.is_file():
        raise DataError(f"{root}: missing rating_final.csv (UCI Restaurant & consumer data)")
    users, items, ratings = [], [], []
    for lineno, row in table_rows(path, ("userID", "placeID", "rating")):
        if row["userID"] is None or row["placeID"] is None or row["rating"] not in ("0", "1", "2"):
            raise DataError(f"{path}:{lineno}: expected userID, placeID and a rating 0, 1 or 2, got {row}")
        if not is_int(row["placeID"]):
            raise DataError(f"{path}:{lineno}: expected an integer placeID, got {describe(row['placeID'])}")
        users.append(row["userID"])
        items.append(row["placeID"])
        ratings.append(float(row["rating"]))
    if not users:
        raise DataError(f"{path}: no ratings; the dataset has no interactions")
    user_set, place_set = set(users), set(items)
    user_features: dict[str, dict[str, Any]] = {}
    item_features: dict[str, dict[str, Any]] = {}
    if (root / "userprofile.csv").is_file():
        user_features |= _profile(root / "userprofile.csv", "userID", {c: c for c in USER_COLUMNS}, user_set)
    if (root / "geoplaces2.csv").is_file():
        item_features |= _profile(root / "geoplaces2.csv", "placeID", PLACE_COLUMNS, place_set)
    user_lists, place_lists = _lists(root, user_set, place_set)
    return RecData.build("restaurant", users, items, [0] * len(users), ratings, seed=seed, source=str(path),
                         item_features=item_features | place_lists, user_features=user_features | user_lists,
                         templates=TEMPLATES)
