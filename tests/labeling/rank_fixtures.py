"""Realistic ranking tasks for the browser tests and the documentation screenshots."""

from __future__ import annotations

import json
from pathlib import Path

SKY_PROMPT = ("Explain to a 10-year-old why the sky is blue.\n"
              "Keep it under 100 words and do not use the word \"wavelength\".")
SKY = [
    ("Sunlight looks white, but it is really a mix of all the colours of the rainbow. When it comes into our "
     "air, it bumps into tiny bits of gas. Blue light gets bounced around much more than red or yellow light, "
     "so blue light comes at your eyes from every part of the sky. That is why the sky looks blue!"),
    ("Because of Rayleigh scattering: the intensity of scattered light goes as one over the fourth power of "
     "the wavelength, so shorter wavelengths dominate the diffuse sky radiance."),
    "The sky is blue because it reflects the ocean.",
    ("Light from the Sun is made of many colours mixed together. Air is full of tiny particles, much smaller "
     "than dust. When sunlight hits them, the blue part gets scattered all over the place, like a pinball "
     "bouncing around, while the red and orange parts mostly go straight through.\n\nSo when you look up, "
     "you see blue light coming from everywhere. At sunset the light travels through much more air, the blue "
     "gets scattered away before it reaches you, and the sky turns orange and red instead."),
    ("Great question! The sky is blue. Scientists have studied this for a long time and there are many "
     "theories. Some people think it is because of the ocean, others think it is because of the air. The most "
     "important thing is to keep asking questions and never stop being curious about the world around you!"),
    "Tiny air particles scatter blue sunlight the most, so blue reaches your eyes from all directions.",
    "I'm not able to help with that.",
    ("Imagine throwing a handful of different balls at a fence made of thin wires. The small, fast blue balls "
     "bounce off the wires in every direction, while the big red balls mostly fly straight through. Sunlight "
     "works the same way in our air: the blue part bounces all over the sky, so wherever you look, some blue "
     "light is heading toward you."),
    "The sky is blue because blue is the colour of oxygen gas.",
]
EMAIL_PROMPT = "Write a short, friendly email declining a meeting on Friday because I will be travelling."
EMAIL = [
    ("Hi Sam,\n\nThanks for the invite! Unfortunately I'll be travelling on Friday, so I can't make the "
     "meeting. Could we find another time next week? Happy to send a few slots.\n\nBest,\nAlex"),
    "No.",
    ("Dear Sam,\n\nI regret to inform you that I will be unable to attend the meeting scheduled for Friday "
     "due to prior travel commitments. I apologise for any inconvenience this may cause and would be grateful "
     "if you could share the minutes afterwards.\n\nKind regards,\nAlex"),
    "Hey! Can't do Friday, travelling. Next week?",
]


def write_realistic_tasks(path: Path, k: int) -> Path:
    """One ranking task with K = 4 (an email) or K = 9 (the blue sky) realistic responses."""
    prompt, responses, pid = (SKY_PROMPT, SKY, "sky") if k > 4 else (EMAIL_PROMPT, EMAIL, "email")
    assert k <= len(responses)
    path.write_text(json.dumps({"prompt": prompt, "prompt_id": f"{pid}-k{k}", "responses": responses[:k]},
                               ensure_ascii=False) + "\n", encoding="utf-8")
    return path
