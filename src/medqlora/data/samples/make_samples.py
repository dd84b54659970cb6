"""Writes the shipped sample files: small, made-up rows with each real source's exact columns.

Not a dump of any dataset: every row is composed here from the short fact table below, so the tiny
default has something learnable to train on offline. Run: `python -m medqlora.data.samples.make_samples`.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

# (condition, presentation, first-line treatment, confirming test)
FACTS = [
    ("acute uncomplicated cystitis", "dysuria and urinary frequency", "nitrofurantoin", "urinalysis"),
    ("community-acquired pneumonia", "fever, cough and a lobar infiltrate", "amoxicillin", "chest radiograph"),
    ("anaphylaxis", "hypotension and wheeze after a bee sting", "intramuscular epinephrine", "clinical diagnosis"),
    (
        "diabetic ketoacidosis",
        "polyuria, vomiting and Kussmaul breathing",
        "intravenous fluids and insulin",
        "serum ketones",
    ),
    ("hypothyroidism", "fatigue, weight gain and cold intolerance", "levothyroxine", "serum TSH"),
    ("Graves disease", "weight loss, tremor and exophthalmos", "methimazole", "TSH receptor antibodies"),
    ("gout", "a hot swollen first toe joint", "colchicine", "joint aspiration"),
    ("iron deficiency anemia", "fatigue and pale conjunctivae", "oral ferrous sulfate", "serum ferritin"),
    ("atrial fibrillation", "an irregularly irregular pulse", "rate control with a beta blocker", "ECG"),
    ("migraine", "a throbbing unilateral headache with photophobia", "a triptan", "clinical diagnosis"),
    ("acne vulgaris", "comedones and papules on the face", "topical retinoid", "clinical examination"),
    ("psoriasis", "silvery scaly plaques on the elbows", "topical corticosteroid", "clinical examination"),
    ("scabies", "itchy burrows between the fingers", "permethrin cream", "skin scraping"),
    ("streptococcal pharyngitis", "sore throat, fever and tonsillar exudate", "penicillin V", "rapid antigen test"),
    (
        "pulmonary embolism",
        "sudden dyspnea and pleuritic chest pain",
        "anticoagulation with heparin",
        "CT pulmonary angiography",
    ),
    ("major depressive disorder", "low mood and anhedonia for three weeks", "an SSRI", "clinical interview"),
    (
        "preeclampsia",
        "hypertension and proteinuria at 34 weeks",
        "magnesium sulfate and delivery planning",
        "urine protein",
    ),
    (
        "Kawasaki disease",
        "five days of fever and a strawberry tongue in a child",
        "intravenous immunoglobulin",
        "echocardiography",
    ),
    ("appendicitis", "periumbilical pain moving to the right lower quadrant", "appendectomy", "CT abdomen"),
    ("asthma exacerbation", "wheeze and shortness of breath", "inhaled salbutamol", "peak flow"),
]

AGES = ["23-year-old woman", "45-year-old man", "67-year-old woman", "8-year-old boy", "34-year-old man"]


def medqa_rows(rng: random.Random) -> list[dict]:
    """Rows shaped like medical_meadow_medqa: options as a Python-dict string, output 'X: answer'."""
    rows = []
    for condition, presentation, treatment, _test in FACTS:
        for age in rng.sample(AGES, 2):
            wrong = rng.sample([f[2] for f in FACTS if f[2] != treatment], 4)
            options = wrong + [treatment]
            rng.shuffle(options)
            letters = dict(zip("ABCDE", options))
            answer = next(k for k, v in letters.items() if v == treatment)
            question = (
                f"Q:A {age} presents with {presentation}. The diagnosis is {condition}. "
                "What is the most appropriate first-line treatment?"
            )
            rows.append(
                {
                    "instruction": "Please answer with one of the option in the bracket",
                    "input": f"{question} \n{letters!r},",
                    "output": f"{answer}: {treatment}",
                }
            )
    return rows


def o1_rows(rng: random.Random) -> list[dict]:
    """Rows shaped like medical-o1-reasoning-SFT: Question, Complex_CoT, Response."""
    rows = []
    for condition, presentation, treatment, test in FACTS:
        age = rng.choice(AGES)
        rows.append(
            {
                "Question": f"A {age} has {presentation}. What is the likely diagnosis and how is it treated?",
                "Complex_CoT": (
                    f"The picture of {presentation} points to {condition}. It is confirmed by {test}. "
                    f"The usual first-line treatment is {treatment}."
                ),
                "Response": f"This is most likely {condition}; confirm it with {test} and treat with {treatment}.",
            }
        )
    return rows


def alpacare_rows(rng: random.Random) -> list[dict]:
    """Rows shaped like AlpaCare-MedInstruct-52k: about a third carry the `<noinput>` placeholder."""
    rows = []
    for condition, presentation, treatment, test in FACTS:
        rows.append(
            {
                "instruction": f"Name the first-line treatment for {condition}.",
                "input": "<noinput>",
                "output": f"The first-line treatment for {condition} is {treatment}.",
            }
        )
        rows.append(
            {
                "instruction": "Suggest the test that confirms the diagnosis in this patient.",
                "input": f"A patient with suspected {condition} presents with {presentation}.",
                "output": f"Order {test} to confirm {condition}.",
            }
        )
    rng.shuffle(rows)
    return rows


def main(out_dir: Path = Path(__file__).parent) -> None:
    """Write medqa.jsonl, o1.jsonl and alpacare.jsonl beside this file (seeded, reproducible)."""
    rng = random.Random(0)
    for name, rows in [("medqa", medqa_rows(rng)), ("o1", o1_rows(rng)), ("alpacare", alpacare_rows(rng))]:
        with open(out_dir / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
