"""Writes bank-support.csv (and a disjoint central evaluation file): synthetic customer messages
to a bank, one category each.

A stand-in for a bank's own export (columns named by the bank, not by fedtune): ``message``,
``category`` and ``branch`` (the branch that received it: a natural group, and branches see
different mixes of requests). No real customer data. Re-create with:
    python simulations/data/make_bank_support.py
"""

import random
from pathlib import Path

from unique_csv import write_unique

CATEGORIES = {
    "fraud": [
        "there is a payment of {amt} on my card I never made", "someone withdrew {amt} from my account in {city}",
        "I got a text asking for my PIN, was that you?", "my card was used online at a shop I have never heard of",
        "two charges of {amt} appeared that are not mine", "I think my account has been hacked, my password was changed",
    ],
    "cards": [
        "I lost my debit card {when}", "my card was swallowed by the cash machine in {city}",
        "my new card has not arrived yet", "how do I raise my credit card limit to {amt}",
        "the chip on my card stopped working", "I need a replacement card before I travel {when}",
    ],
    "transfers": [
        "my transfer of {amt} to my landlord has not arrived", "how long does an international transfer take",
        "I sent {amt} to the wrong account number", "can I cancel a standing order set up {when}",
        "why was my payment to {city} rejected", "what is the daily limit for online transfers",
    ],
    "loans": [
        "I would like to borrow {amt} for a new car", "what interest rate would I get on a personal loan",
        "can I repay my loan early without a fee", "I missed a loan repayment {when}, what happens now",
        "I want a mortgage for a flat in {city}", "can I extend my loan term to lower the monthly payment",
    ],
    "access": [
        "I cannot log in to the app since {when}", "the app says my account is locked",
        "I forgot my online banking password", "the verification code never arrives on my phone",
        "how do I change the phone number linked to my account", "the website keeps logging me out",
    ],
}
OPENERS = ["", "Hello, ", "Hi, ", "Good morning. ", "Urgent: ", "Please help, "]
CLOSERS = ["", " Thanks.", " Please call me back.", " What should I do?", " This is the second time I ask.",
           " I am a customer since {year}.", " My reference is {ref}.", " I am abroad until {when}."]
CITIES = ["Lyon", "Leeds", "Porto", "Ghent", "Turin", "Cork", "Bremen"]
WHEN = ["yesterday", "this morning", "last week", "on Friday", "two days ago", "next month"]
# Each branch sees its own mix of requests (weights per category, in CATEGORIES order).
BRANCHES = {
    "branch-north": [5, 2, 1, 1, 1], "branch-south": [1, 5, 1, 1, 2], "branch-east": [1, 1, 5, 2, 1],
    "branch-west": [1, 1, 2, 5, 1], "branch-city": [2, 1, 1, 1, 5], "branch-online": [2, 2, 2, 2, 2],
}


def message(category: str, rnd: random.Random) -> str:
    body = rnd.choice(CATEGORIES[category]).format(
        amt=f"{rnd.choice(['£', '€', '$'])}{rnd.randint(20, 9000)}", city=rnd.choice(CITIES), when=rnd.choice(WHEN))
    closer = rnd.choice(CLOSERS).format(year=rnd.randint(1985, 2024), ref=rnd.randint(10000, 99999), when=rnd.choice(WHEN))
    text = rnd.choice(OPENERS) + body + ("." if closer and not body.endswith("?") else "") + closer
    return text[0].upper() + text[1:]


def write(name: str, n: int, seed: int, seen: set[str]) -> None:
    rnd = random.Random(seed)
    names = list(CATEGORIES)
    branches = (list(BRANCHES)[i % len(BRANCHES)] for i in range(n))
    picks = ((rnd.choices(names, weights=BRANCHES[b])[0], b) for b in branches)  # lazy: same draws as before
    write_unique(Path(__file__).with_name(name), ["message", "category", "branch"], picks, message, rnd, seen)


if __name__ == "__main__":
    seen: set[str] = set()
    write("bank-support.csv", 720, seed=0, seen=seen)  # the nodes' records
    write("bank-support-central-eval.csv", 150, seed=1, seen=seen)  # the coordinator's own test set, disjoint
