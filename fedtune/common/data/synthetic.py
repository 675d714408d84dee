"""Built-in demo data: synthetic emergency-department triage notes.

Each record is a short, realistic note (age, sex, complaint, duration, vitals, history) whose
answer is the department the patient should be routed to.  The complaint carries the signal;
vitals and history are correlated but noisy, and the phrasing varies (prose, abbreviated
"CC:" style, nurse hand-over style) so the mapping must be learnt, not pattern-matched.
Generation is fully determined by the seed.  No real patient data is involved.
"""

from __future__ import annotations

import random

from fedtune.common.data.records import Example

DEPARTMENTS = ("cardiology", "gastroenterology", "neurology", "orthopedics", "pulmonology", "urology")

INSTRUCTION = (
    "Triage the patient note. Reply with one department: " + ", ".join(DEPARTMENTS) + "."
)
UNLISTED_INSTRUCTION = "Triage the patient note. Reply with the department."  # data.list-labels = "no"

_COMPLAINTS = {
    "cardiology": [
        "crushing chest pain radiating to the left arm",
        "chest pressure spreading to the jaw",
        "palpitations with a racing, irregular heartbeat",
        "fainted while climbing stairs",
        "breathless when lying flat, ankles swollen",
        "tight chest on exertion that eases with rest",
        "sudden dizziness and a pounding heart",
    ],
    "gastroenterology": [
        "vomited blood twice",
        "black tarry stools",
        "upper abdominal pain after fatty meals",
        "yellow eyes and dark urine",
        "burning epigastric pain and trouble swallowing",
        "bloody diarrhoea",
        "swollen abdomen and confusion, known liver disease",
    ],
    "neurology": [
        "sudden weakness of the right arm and leg",
        "slurred speech and a drooping face",
        "worst headache of her life, sudden onset",
        "a seizure witnessed by family",
        "numbness down one side of the body",
        "double vision and an unsteady gait",
        "sudden loss of vision in one eye",
    ],
    "orthopedics": [
        "fell on an outstretched hand, wrist deformed",
        "twisted ankle, cannot bear weight",
        "hip pain after a fall, leg shortened and rotated",
        "swollen knee after a football tackle",
        "shoulder popped out while lifting",
        "painful swollen forearm after a bike crash",
        "back pain after lifting a heavy box, no numbness",
    ],
    "pulmonology": [
        "productive cough with green sputum and fever",
        "wheezing not relieved by the inhaler",
        "coughing up blood",
        "worsening breathlessness, known COPD",
        "sharp pain on breathing in, with a dry cough",
        "night sweats, weight loss and a cough for weeks",
        "noisy breathing and blue lips after a cold",
    ],
    "urology": [
        "colicky flank pain radiating to the groin",
        "blood in the urine",
        "unable to pass urine since the morning",
        "burning on urination with fever and back pain",
        "painful swollen testicle",
        "recurrent kidney stones, severe side pain",
        "weak urine stream and dribbling",
    ],
}

_HISTORY = {
    "cardiology": ["hypertension", "high cholesterol", "prior heart attack", "atrial fibrillation", "smoker"],
    "gastroenterology": ["alcohol use", "peptic ulcer", "gallstones", "hepatitis C", "takes ibuprofen daily"],
    "neurology": ["migraine", "epilepsy", "hypertension", "atrial fibrillation", "prior stroke"],
    "orthopedics": ["osteoporosis", "plays contact sports", "on blood thinners", "prior fracture"],
    "pulmonology": ["asthma", "COPD", "smoker", "recent flu", "works in construction"],
    "urology": ["kidney stones", "enlarged prostate", "diabetes", "recurrent urinary infections"],
}
_COMMON_HISTORY = ["diabetes", "no known allergies", "penicillin allergy", "lives alone", "no prior illness", "obesity"]

_DURATIONS = ["for 30 minutes", "for 2 hours", "since last night", "for 6 hours", "for 2 days", "for a week", "since this morning"]

_AGE_RANGE = {
    "cardiology": (45, 90), "gastroenterology": (25, 85), "neurology": (20, 90),
    "orthopedics": (8, 95), "pulmonology": (18, 88), "urology": (22, 85),
}


def _vitals(dept: str, rnd: random.Random) -> dict[str, object]:
    sys_bp = rnd.randint(105, 150)
    hr = rnd.randint(62, 100)
    temp = round(rnd.uniform(36.2, 37.4), 1)
    spo2 = rnd.randint(95, 99)
    if dept == "cardiology" and rnd.random() < 0.6:
        sys_bp, hr = sys_bp + rnd.randint(10, 40), hr + rnd.randint(10, 40)
    if dept == "pulmonology" and rnd.random() < 0.6:
        spo2, temp = rnd.randint(86, 94), round(temp + rnd.uniform(0.3, 1.8), 1)
    if dept == "urology" and rnd.random() < 0.4:
        temp = round(temp + rnd.uniform(0.5, 1.8), 1)
    if dept == "gastroenterology" and rnd.random() < 0.4:
        hr, sys_bp = hr + rnd.randint(15, 35), sys_bp - rnd.randint(10, 30)
    if dept == "neurology" and rnd.random() < 0.5:
        sys_bp += rnd.randint(20, 50)
    return {"bp": f"{sys_bp}/{rnd.randint(60, 100)}", "hr": hr, "temp": temp, "spo2": spo2}


def _note(dept: str, rnd: random.Random) -> str:
    age = rnd.randint(*_AGE_RANGE[dept])
    sex = rnd.choice(["man", "woman"])
    complaint = rnd.choice(_COMPLAINTS[dept])
    if sex == "man":
        complaint = complaint.replace("her life", "his life")
    duration = rnd.choice(_DURATIONS)
    v = _vitals(dept, rnd)
    pool = _HISTORY[dept] + _COMMON_HISTORY
    history = ", ".join(rnd.sample(pool, k=rnd.randint(1, 2)))
    style = rnd.randrange(3)
    if style == 0:
        return (
            f"{age}-year-old {sex} with {complaint} {duration}. "
            f"BP {v['bp']}, HR {v['hr']}, T {v['temp']} C, SpO2 {v['spo2']}%. History: {history}."
        )
    if style == 1:
        return (
            f"{age}{sex[0].upper()}. CC: {complaint} ({duration}). "
            f"Vitals {v['bp']}, {v['hr']} bpm, {v['temp']}C, sat {v['spo2']}%. PMH: {history}."
        )
    return (
        f"Walk-in {sex}, {age}, {complaint} {duration}. "
        f"HR {v['hr']}, BP {v['bp']}, SpO2 {v['spo2']}%, T {v['temp']}. Hx {history}."
    )


def triage_example(dept: str, rnd: random.Random, instruction: str = INSTRUCTION) -> Example:
    return Example(
        messages=({"role": "system", "content": instruction}, {"role": "user", "content": _note(dept, rnd)}),
        completion=dept,
        label=dept,
    )


def generate_triage(n: int, seed: int = 0, instruction: str = INSTRUCTION) -> list[Example]:
    """``n`` triage records with labels balanced across departments, deterministic in ``seed``;
    ``instruction``: their system prompt (the notes do not depend on it)."""
    rnd = random.Random(seed)
    labels = [DEPARTMENTS[i % len(DEPARTMENTS)] for i in range(n)]
    rnd.shuffle(labels)
    return [triage_example(d, rnd, instruction) for d in labels]
