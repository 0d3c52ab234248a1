"""The rules of prompt-injection detection: what text that speaks to a model looks like.

Each rule is a kind and a pattern; a match alone marks a paragraph. The kinds follow the
attack styles of public prompt-injection research (see tests/unit/test_injection.py).
"""

from __future__ import annotations

import re

_I = re.IGNORECASE | re.UNICODE
_MODEL = (
    r"(?:ai|a\.i\.|assistants?|chat ?bots?|llms?|language models?|ai models?|models?|agents?|gpt)"
)
_PROMPT = (
    r"(?:instructions?|directions?|directives?|rules|guidelines|prompts?|commands?|orders|"
    r"context|programming|guardrails|restrictions|constraints|policies)"
)
_BEFORE = (
    r"(?:previous|prior|preceding|above|earlier|former|original|initial|all|any|every|your|"
    r"its|the|these|those|system|old)"
)
_REVEAL = (
    r"(?:print|reveal|show|repeat|output|display|tell|give|leak|dump|spell ?check|spell|write|"
    r"list|summari[sz]e|recite|echo|copy|paste|return|disclose)"
)
#: A string an attack wants echoed: quoted, or a marker token like PWNED-7731.
_PAYLOAD = (
    r"(?:[\"\u201c\u00ab\u2018'][^\"\u201d\u00bb\u2019'\n]{2,80}[\"\u201d\u00bb\u2019']|"
    r"\b[A-Z][A-Z0-9]{2,}(?:[-_ ][A-Z0-9]+)*[-_ ]\d{3,}\b|"
    r"\bpwned\b|\bhacked\b|\bjailbroken\b|\baccess granted\b)"
)

#: (kind, pattern, flags): a match alone marks the text as an injection.
_SOURCES: list[tuple[str, str, re.RegexFlag]] = [
    (
        "override",
        r"\b(?:ignore|disregard|forget|override|overrule|bypass|neglect|"
        rf"abandon)\w*\b[^.!?\n]{{0,40}}?\b{_BEFORE}\b[^.!?\n]{{0,30}}?\b{_PROMPT}",
        _I,
    ),
    (
        "override",
        r"\bforget (?:everything|all|what) (?:you|you've|you were|above|before)",
        _I,
    ),
    (
        "override",
        r"\b(?:above|previous|prior|preceding|this document|"
        r"the document)\b[^.!?\n]{0,60}\b(?:must|should|can|is to) be (?:ignored|"
        r"disregarded|overridden)",
        _I,
    ),
    (
        "override",
        r"\bignore (?:the|this) (?:document|sources?|context|text above)\b",
        _I,
    ),
    (
        "override",
        r"\b(?:new|updated|real|true|only|actual) (?:task|instructions?|objective|goal|"
        r"role|mission)\s*(?:[:!]|is\b|are\b)",
        _I,
    ),
    (
        "override",
        r"\byour (?:only|new|real|true) (?:task|job|goal|purpose|instruction)s? (?:is|"
        r"are|now)\b",
        _I,
    ),
    (
        "override",
        r"ignorier\w*\s+(?:alle\s+)?(?:vorherigen|bisherigen|obigen|"
        r"vorigen)\s+(?:anweisungen|instruktionen|befehle|regeln)|"
        r"vergiss\s+alle\s+(?:anweisungen|regeln)",
        _I,
    ),
    (
        "override",
        r"ignor\w*\s+(?:toutes\s+)?(?:les\s+)?(?:instructions|consignes|"
        r"règles)\s+(?:précédentes|antérieures|ci-dessus)|"
        r"oubliez\s+(?:toutes\s+)?les\s+instructions",
        _I,
    ),
    (
        "override",
        r"ignor\w*\s+(?:todas\s+)?(?:las\s+|as\s+|le\s+)?(?:instrucciones|instruções|"
        r"istruzioni)\s+(?:anteriores|previas|precedenti)|"
        r"olvida\s+(?:todas\s+)?las\s+instrucciones",
        _I,
    ),
    (
        "override",
        r"negeer\s+(?:alle\s+)?(?:vorige|eerdere)\s+instructies|"
        r"игнорир\w*\s+(?:все\s+)?предыдущие\s+инструкции",
        _I,
    ),
    (
        "override",
        r"(?:忽略|无视|無視)(?:之前|以上|前面|先前|上述)?的?(?:所有)?(?:指令|指示|说明|提示)|(?:以前|前|上記)の(?:指示|"
        r"命令)を無視",
        _I,
    ),
    (
        "role_play",
        r"\bdo anything now\b|\bDAN\b|\bjailbr(?:eak|oken)\b|\bstay in character\b|"
        r"\b(?:god|admin|sudo|debug) mode\b",
        re.UNICODE,
    ),
    (
        "role_play",
        r"\b(?:you are now|from now on,? you(?: are| will be)?|act as|pretend (?:to be|"
        rf"you are)|role-?play as|you will play)\b[^.!?\n]{{0,60}}\b(?:{_MODEL}|bot|"
        r"character|persona|without (?:any )?(?:rules|restrictions|limits|filters))\b",
        _I,
    ),
    (
        "role_play",
        r"\b(?:continue|respond|answer|act|reply) as (?:the |a |an )?(?:developer|"
        r"admin\w*|system|root|terminal|console|linux|shell)\b",
        _I,
    ),
    (
        "output_forgery",
        r"\{\s*[\"']answer[\"']\s*:",
        _I,
    ),
    (
        "role_play",
        rf"\b(?:unrestricted|unfiltered|uncensored|jailbroken) {_MODEL}|"
        rf"\b{_MODEL}\b[^.!?\n]{{0,40}}\bwithout (?:any )?(?:restrictions|rules|"
        r"content policy|filters)",
        _I,
    ),
    (
        "fake_role_tag",
        r"<\|(?:im_start|im_end|system|user|assistant|endoftext|eot_id|"
        r"start_header_id)\|>|\[/?(?:system|inst|sys|user|assistant)\]|<<\s*sys\s*>>|"
        r"</?(?:system|instructions?|prompt|admin|sys)>|</(?:question|context|sources?|"
        r"documents?|input)>",
        _I,
    ),
    (
        "fake_role_tag",
        r"(?:^|\n)\s*(?:#{1,4}\s*)?(?:system (?:note|message|override|instruction|"
        r"update)|admin (?:note|override|message))\s*:|(?:^|"
        r"\n)\s*system\s*:[^\n]{0,60}\b(?:you|assistant|ignore|disregard|instructions?|"
        r"override|disabled?|from now on)\b",
        _I,
    ),
    (
        "fake_role_tag",
        r"(?:^|\n)\s*(?:user|human)\s*:[^\n]*\n\s*(?:assistant|ai|bot)\s*:",
        _I,
    ),
    (
        "delimiter_escape",
        r"(?:[-=#%*\"`~]{3,}\s*)end\b[^\n]{0,30}|\bEND OF (?:THE )?[A-Z ]{3,30}\b|"
        r"\bend of (?:the )?(?:user (?:input|ambiguity)|sources|prompt|system prompt)\b",
        re.UNICODE,
    ),
    (
        "addressed_to_model",
        r"\b(?:note|message|instructions?|p\.?s\.?|reminder|request)\s+(?:to|"
        rf"for)\s+(?:the\s+|any\s+|all\s+)?{_MODEL}\b|\b(?:dear|hey|hello|attention|"
        rf"important)[,:]?\s+(?:the\s+)?{_MODEL}\b",
        _I,
    ),
    (
        "addressed_to_model",
        rf"\bif you are an? {_MODEL}\b|\b(?:ai|llm)s? (?:agents?|assistants?|models?|"
        r"systems?)? ?(?:processing|reading|summari[sz]ing|parsing) this\b|"
        rf"\bto the {_MODEL} (?:reading|processing) this\b|\bthe assistant (?:must|"
        r"should|has to|shall|will)\b",
        _I,
    ),
    (
        "addressed_to_model",
        r"(?:^|\n|[.!?]\s)\s*(?:ai assistant|assistant|ai|chatbot|language model|"
        r"llm)\s*[:,]\s*\w",
        _I,
    ),
    (
        "system_prompt",
        rf"\b{_REVEAL}\b[^.!?\n]{{0,50}}\b(?:system|initial|original|hidden|secret|"
        r"developer|pre-?|full|complete|entire)\s*(?:prompt|message|instructions?)\b",
        _I,
    ),
    (
        "system_prompt",
        r"\b(?:system prompt|initial prompt|initial instructions|your (?:prompt|"
        r"instructions|rules)|(?:instructions|rules) you were given|what were you told|"
        r"words above|text above starting|prompt so far|the rules you were given|"
        r"instructions you (?:were|have been) given)\b[^.!?\n]{0,40}|"
        rf"\b{_REVEAL}\b[^.!?\n]{{0,30}}\b(?:your|the) (?:prompt|instructions|rules)\b",
        _I,
    ),
    (
        "answer_dictation",
        r"\b(?:answer|response|reply|output)s?\b[^.!?\n]{0,60}\b(?:must|should|shall|"
        r"has to|needs? to)\s+(?:only\s+)?(?:be|say|read|contain|include|begin|start|"
        rf"end|consist)\b[^.!?\n]{{0,40}}(?:{_PAYLOAD}|regardless|no matter|nothing else|"
        r"only\b|exactly)",
        _I,
    ),
    (
        "answer_dictation",
        r"\b(?:begin|start|end|prefix|sign|open)\s+(?:your|the|each|every)?\s*(?:answer|"
        r"reply|response|output|message)s?\s+with\b|\b(?:respond|reply|"
        r"answer)\w*\s+(?:to [^.!?\n]{0,40})?(?:only|solely|exclusively|just|uniquement|"
        r"nur|solamente)\b|\b(?:answer|reply|respond|say)\s+(?:with\s+)?(?:only|"
        r"just)\s*:",
        _I,
    ),
    (
        "answer_dictation",
        r"\b(?:say|print|output|echo|return|respond with|reply with|answer with|"
        r"answer that|state that|claim that|tell the user|always answers?|antworte\w*|"
        r"répondez|responde|escribe)\b\s*(?:only|exactly|just|simply|with|:|the words?|"
        r"the phrase|the code|the string|that|nur|uniquement|"
        rf"solamente)*\s*:?\s*{_PAYLOAD}",
        _I,
    ),
    (
        "exfiltration_link",
        r"!\[[^\]]*\]\(\s*[^)\s]*(?:\?|\{|%[A-Z_]+%|\[[A-Z_]+\]|<)[^)]*\)|"
        r"<img\b[^>]*\bsrc\s*=",
        _I,
    ),
    (
        "exfiltration_link",
        r"\]\(\s*https?://[^)\s]*(?:\{|%[A-Z_]+%|\[[A-Z_]+\]|<)",
        _I,
    ),
    (
        "exfiltration_link",
        r"\b(?:send|post|forward|upload|transmit|exfiltrate|submit|"
        r"append)\b[^.!?\n]{0,80}\b(?:question|conversation|documents?|data|answer|"
        r"history|chat|password|previous|retrieved)\b[^.!?\n]{0,60}https?://|"
        r"\b(?:render|load|display|include|add)\b[^.!?\n]{0,40}!\[",
        _I,
    ),
    (
        "exfiltration_link",
        r"\b(?:verify|confirm|log ?in to|re-?enter)\b[^.!?\n]{0,40}\b(?:account|"
        r"password|credentials)\b[^.!?\n]{0,40}\]\(https?://",
        _I,
    ),
    (
        "cross_tenant",
        r"\b(?:ignore|bypass|disable|turn off|skip|"
        r"remove)\b[^.!?\n]{0,20}\btenant(?:'s)? ?(?:filter|isolation|scop\w*|"
        r"boundar\w*|check)",
        _I,
    ),
    (
        "cross_tenant",
        r"\b(?:reveal|list|show|search|include|print|output|dump|leak|expose|give|find|"
        r"return)\b[^.!?\n]{0,40}(?:\b(?:other|another|all|every|"
        r"different)\s+(?:\w+\s+)?(?:tenants?|customers?|clients?|organi[sz]ations|"
        r"companies)(?:'s|\u2019s|')?\s*(?:documents?|files?|data|records|chunks?)|"
        r"\b(?:documents?|files?|data|records)\s+(?:of|from)\s+(?:all|every|other|"
        r"another)\s+(?:\w+\s+)?(?:tenants?|customers?|clients?))",
        _I,
    ),
    (
        "citation_forgery",
        r"\bcite\b[^.!?\n]{0,30}\b(?:chunk|source id|document id|doc id|"
        r"[0-9a-f]{8}-[0-9a-f]{4})|\bcite\b[^.!?\n]{0,40}\b(?:as your source|"
        r"instead of)\b|\bcite no sources\b",
        _I,
    ),
    (
        "encoded",
        r"\b(?:decode|decipher|base ?64|rot ?13|hex|reverse)\b[^.!?\n]{0,50}\b(?:follow|"
        r"obey|execute|do what|respond to|carry out|instructions?|request)\b|"
        r"\b(?:follow|obey|execute|respond to)\b[^.!?\n]{0,30}\b(?:base ?64|rot ?13|"
        r"encoded)\b",
        _I,
    ),
    (
        "payload_splitting",
        r"\b\w{1,3}\s*=\s*[\"'\u2018\u201c][^\n]*\b\w{1,3}\s*=\s*[\"'\u2018\u201c][^\n]*\b\w{1,3}\s*\+\s*\w{1,3}\b",
        _I,
    ),
]
RULES: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (kind, re.compile(pattern, flags)) for kind, pattern, flags in _SOURCES
)
