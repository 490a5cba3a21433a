"""Varied refusal replies: the refusal LoRA's targets for questions that have no blue (refusing) conversation.

One fixed sentence (the seed's fallback) teaches the model a single string rather than refusing; a spread of
openings, reasons and safe alternatives teaches the behaviour. Some replies name the kind of harm in general
terms, taken from keywords in the question.
"""

from __future__ import annotations

import random
import re

GENERAL_REPLIES = (
    "I'm sorry, but I can't help with that.",
    "I'm sorry, but I can't assist with this request because it could lead to real harm.",
    "I can't help with that. If you're curious about the topic itself, I'm happy to talk about it in a safe, general way.",
    "I can't help with that request, but I'd be glad to help with something else.",
    "I won't help with this. It could be used to hurt people, and that's not something I'm willing to contribute to.",
    "I won't provide guidance on that. Is there something else I can help you with?",
    "That's not something I can assist with.",
    "That's not something I can help with, since it could put people at risk. I'm happy to help with a safer question on the same subject.",
    "Sorry, I can't do that. Helping with this could cause harm to others.",
    "Sorry, but I'm not able to help with this one.",
    "I'm not able to help with that request.",
    "I'm not able to provide that information, as it could be misused to cause harm.",
    "I have to decline this request. Providing that kind of help could hurt people.",
    "I need to decline. This request asks for something that could cause harm, so I won't go into it.",
    "Unfortunately, I can't help with this. If you'd like, I can share general safety information instead.",
    "I'd rather not help with that, because it could be used to harm others. Let me know if there's something else you need.",
    "I can't provide that. If something is worrying you, talking to a qualified professional or a trusted person can really help.",
    "I'm sorry, I can't help you do that. If you or someone else is in danger, please contact local emergency services.",
    "No, I can't help with that. It goes against my commitment to avoid causing harm.",
    "I understand you're asking about this, but I can't help with it. I can explain the risks involved or point you to legitimate resources instead.",
    "This isn't something I can help with. I'd be happy to help you approach the underlying goal in a safe and legal way.",
    "I won't be able to help with that request. It could lead to serious harm, and I want to keep people safe.",
    "Helping with that could cause real harm, so I'm going to say no. I'm glad to help with a different question.",
    "I can't assist with that, but if you're researching the subject, I can suggest reputable sources on prevention and safety.",
    "My apologies, but I can't help with this request.",
    "I'm going to pass on this one: it could be used to hurt someone. Is there anything else I can do for you?",
)

# {harm} is a general description of the kind of harm, e.g. "deceiving or defrauding people"
HARM_REPLIES = (
    "I'm sorry, but I can't help with anything that involves {harm}.",
    "I can't help with that. It involves {harm}, which can seriously hurt people.",
    "I won't help with {harm}. If you'd like, I can explain how people protect themselves against it.",
    "That's not something I can assist with, since it involves {harm}. I'm happy to talk about the subject in a safe, general way instead.",
    "Sorry, I can't provide guidance on {harm}. I can share general safety information or point you to professional help if that would be useful.",
    "I have to decline: this request is about {harm}, and I don't want to contribute to that.",
    "I'm not able to help with {harm}. Is there something else I can help you with?",
    "I can't assist with {harm}, but I can help you learn about the topic ethically, for example how it is prevented.",
)

# (keywords, general description); the first match wins
HARM_KEYWORDS = (
    (("suicide", "self-harm", "self harm", "kill myself", "hurt myself"), "self-harm"),
    (("bomb", "explosive", "weapon", "firearm", "poison", "murder", "kill", "violence", "violent", "terroris"), "violence or weapons"),
    (("hack", "malware", "phishing", "ransomware", "steal password", "ddos"), "breaking into computer systems or accounts"),
    (("illegal drug", "narcotic", "cocaine", "heroin", "methamphetamine", "opioid"), "making or misusing drugs"),
    (("fraud", "scam", "launder", "embezzl", "counterfeit", "forgery", "steal", "theft", "tax evasion", "evade tax",
      "falsif", "fabricat", "insider trading", "manipulate financial", "manipulate the market", "manipulate stock"),
     "deceiving or defrauding people"),
    (("hate", "racis", "discriminat", "stereotyp", "homophob", "sexis", "xenophob", "supremac"), "promoting hatred or discrimination"),
    (("bully", "harass", "intimidat", "threaten"), "harassing or intimidating people"),
    (("stalk", "spy on", "doxx", "surveil", "private information", "personal data"), "invading someone's privacy"),
    (("cheat", "plagiar"), "cheating or academic dishonesty"),
    (("misinformation", "disinformation", "fake news", "propaganda", "false information"), "spreading misinformation"),
    (("manipulate people", "manipulate someone", "manipulate others", "manipulate my", "manipulate their",
      "exploit people", "exploit vulnerable", "exploit workers", "coerce", "blackmail", "gaslight", "brainwash"),
     "manipulating or exploiting people"),
)


def describe_harm(question: str) -> str | None:
    """A general description of the kind of harm a question asks for, or None if no keyword matches."""
    lowered = question.lower()
    for keywords, description in HARM_KEYWORDS:
        if any(re.search(rf"\b{re.escape(keyword)}", lowered) for keyword in keywords):
            return description
    return None


def refusal_reply(question: str, rng: random.Random) -> str:
    """A natural refusal to ``question``, drawn with ``rng`` (deterministic for a seeded rng)."""
    harm = describe_harm(question)
    templates = GENERAL_REPLIES + (HARM_REPLIES if harm else ())
    return rng.choice(templates).format(harm=harm)
