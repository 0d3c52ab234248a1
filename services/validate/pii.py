"""Personal data in text: what validate looks for in an answer before it leaves the pipeline.

Each kind is a pattern plus a check of its own (Luhn for cards, mod-97 for IBANs, SSA rules for
social security numbers, the address itself for IPs). Phone numbers have no checksum, so a
number's shape decides: international (+CC) and trunk-prefixed (0…) numbers with groups, and
North-American numbers, count on their own; bare digit runs and 7-digit local numbers count only
after a word such as "call" or "phone"; a number right after "order", "policy", "ISBN"… never.

>>> [(m.kind, m.value) for m in find_pii("Mail jane.doe@corp.example or call +44 20 7946 0958.")]
[('email', 'jane.doe@corp.example'), ('phone', '+44 20 7946 0958')]
>>> find_pii("Version 1.2.3 shipped on 2024-01-15 for $1,250.00.")
[]
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

_DIGIT_KINDS = frozenset({"phone", "card", "us_ssn"})


@dataclass(frozen=True)
class PiiMatch:
    """One piece of personal data found in a text, at `text[start:end] == value`.

    >>> PiiMatch("phone", "(212) 555-0147", 10, 24).canonical()
    '2125550147'
    """

    kind: str  # "email", "phone", "card", "us_ssn", "iban", "uk_nino", "ip_address"
    value: str
    start: int
    end: int

    def canonical(self) -> str:
        """The form two spellings of the same value share, for comparing answer and sources."""
        if self.kind == "email":
            return self.value.lower()
        if self.kind in _DIGIT_KINDS:  # +44 (0)20 …: the bracketed trunk 0 is not dialled
            return re.sub(r"\D", "", self.value.replace("(0)", ""))
        if self.kind == "ip_address":
            return str(ipaddress.ip_address(self.value))
        return re.sub(r"\s", "", self.value).upper()


# --- email -----------------------------------------------------------------------------------
_EMAIL = re.compile(
    r"(?<![\w.%+'-])[A-Za-z0-9](?:[A-Za-z0-9._%+'-]{0,62}[A-Za-z0-9_%+-])?"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?![\w@-])"
)
_FILE_SUFFIXES = frozenset({"png", "jpg", "jpeg", "gif", "svg", "webp", "pdf", "js", "css", "py"})


def _emails(text: str) -> Iterator[PiiMatch]:
    for m in _EMAIL.finditer(text):
        tld = m.group().rsplit(".", 1)[1].lower()
        if ".." not in m.group() and tld not in _FILE_SUFFIXES:  # icon@2x.png is an asset
            yield PiiMatch("email", m.group(), m.start(), m.end())


# --- IBAN ------------------------------------------------------------------------------------
_IBAN_LENGTHS = dict(
    (entry[:2], int(entry[2:]))
    for entry in """AD24 AE23 AL28 AT20 AZ28 BA20 BE16 BG22 BH22 BR29 BY28 CH21 CR22 CY28 CZ24
    DE22 DK18 DO28 EE20 EG29 ES24 FI18 FO18 FR27 GB22 GE22 GI23 GL18 GR27 GT28 HR21 HU28 IE22
    IL23 IQ23 IS26 IT27 JO30 KW30 KZ20 LB28 LC32 LI21 LT20 LU20 LV21 MC27 MD24 ME22 MK19 MR27
    MT31 MU30 NL18 NO15 PK24 PL28 PS29 PT25 QA29 RO24 RS22 SA24 SC31 SE24 SI19 SK24 SM27 ST25
    SV28 TL23 TN24 TR26 UA29 VA22 VG24 XK20""".split()
)
_IBAN = re.compile(r"(?<![\w-])[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}")


def _iban_checksum_ok(compact: str) -> bool:
    rotated = compact[4:] + compact[:4]
    return int("".join(str(int(ch, 36)) for ch in rotated)) % 97 == 1


def _ibans(text: str) -> Iterator[PiiMatch]:
    for m in _IBAN.finditer(text):
        length = _IBAN_LENGTHS.get(m.group()[:2])
        if length is None:
            continue
        # The pattern runs on into a following code word; the country fixes where it ends.
        end, seen = m.start(), 0
        while seen < length and end < m.end():
            seen += text[end] != " "
            end += 1
        if seen < length or (end < len(text) and text[end].isalnum()):
            continue
        value = text[m.start() : end]
        if _iban_checksum_ok(value.replace(" ", "")):
            yield PiiMatch("iban", value, m.start(), end)


# --- payment cards ---------------------------------------------------------------------------
_CARD = re.compile(r"(?<![\w.,+-])(?:\d{2,6}(?:[ -]\d{1,6}){1,6}|\d{13,19})(?![\w]|[.,-]\d)")
_CARD_PREFIX = re.compile(r"4|5|6|3[04-8]|2[2-7]")  # issuer ranges of the card networks


def _luhn_ok(digits: str) -> bool:
    doubled = (int(d) * (1 + i % 2) for i, d in enumerate(reversed(digits)))
    return sum(d - 9 if d > 9 else d for d in doubled) % 10 == 0


# Group sizes as cards print them: unbroken, fours (and a short tail), Amex and Diners 4-6-5/4-6-4.
_CARD_GROUPING = re.compile(r"\d+|(?:4 )+[1-4]|4 6 [45]")


def _cards(text: str) -> Iterator[PiiMatch]:
    for m in _CARD.finditer(text):
        groups = re.split(r"([ -])", m.group())
        # 4111 1111-1111 is two numbers, not one card.
        if len(set(groups[1::2])) > 1 or _reads_as_reference(text, m.start()):
            continue
        # Longest leading run of groups that is a card: "4111 1111 1111 1111 12" ends early.
        for n in range(len(groups), 0, -2):
            value = "".join(groups[:n])
            digits = value.replace(" ", "").replace("-", "")
            sizes = " ".join(str(len(g)) for g in groups[:n:2])
            if (
                13 <= len(digits) <= 19
                and _CARD_GROUPING.fullmatch(sizes)
                and _CARD_PREFIX.match(digits)
                and _luhn_ok(digits)
            ):
                yield PiiMatch("card", value, m.start(), m.start() + len(value))
                break


# --- US social security numbers --------------------------------------------------------------
_SSN = re.compile(r"(?<![\w.,/-])(\d{3})-(\d{2})-(\d{4})(?![\w]|[.,/-]\d)")


def _ssns(text: str) -> Iterator[PiiMatch]:
    for m in _SSN.finditer(text):
        area, group, serial = m.groups()
        if area in ("000", "666") or area[0] == "9" or group == "00" or serial == "0000":
            continue
        if not _reads_as_reference(text, m.start()):
            yield PiiMatch("us_ssn", m.group(), m.start(), m.end())


# --- UK national insurance numbers -----------------------------------------------------------
_NINO = re.compile(
    r"(?<![\w-])(?!BG|GB|KN|NK|NT|TN|ZZ)[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z]"
    r"(?: ?\d{2}){3} ?[A-D](?![\w-])"
)


def _ninos(text: str) -> Iterator[PiiMatch]:
    for m in _NINO.finditer(text):
        yield PiiMatch("uk_nino", m.group(), m.start(), m.end())


# --- IP addresses ----------------------------------------------------------------------------
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w]|\.\d)")
_IPV6 = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:]|\.\w)")
# 1.2.3.4 is an address, a version or a section number; the word before it tells which.
_NUMBERING_BEFORE = re.compile(
    r"(?i)\b(?:version|ver|v|release|build|firmware|rev|section|sec|clause|table|figure|fig|"
    r"chapter|paragraph|para|article|art|step|rule|item|appendix|§)\.?\s*$"
)


def _ip_addresses(text: str) -> Iterator[PiiMatch]:
    for pattern in (_IPV4, _IPV6):
        for m in pattern.finditer(text):
            value = m.group()
            if pattern is _IPV6 and len([g for g in value.split(":") if g]) < 3:
                continue  # "Add::" or "12:30:45" shaped, not an address someone wrote down
            try:
                address = ipaddress.ip_address(value)
            except ValueError:
                continue
            if address.is_loopback or address.is_unspecified:  # identify no one
                continue
            if not _NUMBERING_BEFORE.search(text[max(0, m.start() - 12) : m.start()]):
                yield PiiMatch("ip_address", value, m.start(), m.end())


# --- phone numbers ---------------------------------------------------------------------------
_PHONE = re.compile(  # digit groups, not inside a word, an amount, a path or a longer number
    r"(?<![\w.,/:#$€£¥%+@&=-])\+?\(?\d(?:[ ().-]{0,3}\d)*(?![\w%]|[/:-]\w|[.,]\d)"
)
_PHONE_SEPARATORS = frozenset({"", " ", "-", ".", "(", ")", " (", ") ", ")-", ")."})
_PHONE_WORD_BEFORE = re.compile(
    r"(?i)\b(?:call(?:ing)?|phone|tel|telephone|mobile|mob|cell|fax|ring|text|sms|whatsapp|"
    r"contact|reach|dial|hotline|helpline|line|landline|number|extension|ext|"
    r"t[ée]l[ée]phone|telefon|tel[ée]fono|portable|m[óo]vil|handy|llam[ae]|ll[áa]mame|appelez|"
    r"anrufen|ruf)\b[^\d\n]{0,24}$"
)
_PHONE_WORD_AFTER = re.compile(r"(?i)^\s*\(?(?:mobile|cell|office|work|home|landline|fax)\b")
_NOT_PERSONAL_BEFORE = re.compile(
    r"(?i)\b(?:isbn(?:-1[03])?|issn|order|invoice|policy|account|acct|ref|reference|ticket|case|"
    r"serial|tracking|part|sku|claim|booking|confirmation|transaction|po|batch|lot|model|version|"
    r"build|pages?|room|flight|patent|member(?:ship)?|customer|employee|badge|registration|vin|"
    r"licen[cs]e|receipt|shipment|parcel|project|request|item|product|catalog(?:ue)?|doc(?:ument)?)s?"
    r"(?:\s*(?:no\.?|nr\.?|number|num|#|id|code|ref|is|was))*\s*[:#]?\s*$"
)
_IBAN_SHAPED_BEFORE = re.compile(r"\b[A-Z]{2}\d{2} ?$")  # DE89 3704…: an IBAN that failed mod-97


def _line_before(text: str, start: int) -> str:
    return text[max(0, start - 48) : start].rsplit("\n", 1)[-1]


def _reads_as_reference(text: str, start: int) -> bool:
    """Whether the number at `start` follows "order no.", "ISBN", an IBAN's head and the like."""
    before = _line_before(text, start)
    return bool(_NOT_PERSONAL_BEFORE.search(before) or _IBAN_SHAPED_BEFORE.search(before))


_DATE_SHAPES = ((4, 2, 2), (2, 2, 4), (2, 2, 2), (1, 1, 4), (1, 2, 4), (2, 1, 4))


def _phone_shape(value: str) -> str | None:
    """'strong' for a number that reads as a phone alone, 'weak' for one needing a word."""
    digits = re.findall(r"\d+", value)
    separators = re.split(r"\d+", value)[1:-1]
    total, balanced = sum(map(len, digits)), value.count("(") == value.count(")")
    if not balanced or any(sep not in _PHONE_SEPARATORS for sep in separators):
        return None
    sizes, flat = tuple(map(len, digits)), "".join(digits)
    if value.startswith("+"):
        return "strong" if 8 <= total <= 15 and value[1:].lstrip("(")[0] != "0" else None
    if value.startswith("00") and len(digits) > 1 and sizes[0] <= 5 and value[2] != "0":
        return "strong" if 10 <= total <= 17 else None
    if sizes in _DATE_SHAPES and len({s for s in separators if s}) == 1:
        return None
    nanp = "".join(digits[1:]) if sizes[0] == 1 and digits[0] == "1" else "".join(digits)
    nanp_groups = sizes[1:] if sizes[0] == 1 and digits[0] == "1" else sizes
    if len(nanp) == 10 and nanp[0] in "23456789" and nanp[3] in "23456789":
        if nanp_groups == (3, 3, 4):
            return "strong"
        if nanp_groups == (10,):
            return "weak"
    if sizes == (3, 4) and digits[0][0] in "23456789" and separators == ["-"]:
        return "weak"
    if flat[:1] == "0" and flat[1:2] != "0" and 9 <= total <= 12:
        if len(digits) == 1:
            return "weak" if total in (10, 11) else None
        if 2 <= sizes[0] <= 5 and all(2 <= s <= 8 for s in sizes[1:]):
            return "strong"
    if flat[0] != "0" and 7 <= total <= 12 and len(digits) >= 3:
        return "weak" if all(2 <= s <= 4 for s in sizes) else None
    return None


def _phones(text: str) -> Iterator[PiiMatch]:
    for m in _PHONE.finditer(text):
        pieces = re.split(r"(\d+)", m.group())
        # Longest leading run of digit groups that is a phone: "0958 24 hours" ends early. No
        # phone has more than 8 groups, and a table row of numbers must not cost quadratic time.
        for n in range(min(len(pieces) - 1, 16), 1, -2):
            value = "".join(pieces[:n])
            start, end = m.start(), m.start() + len(value)
            shape = _phone_shape(value)
            if shape is None:
                continue
            if _reads_as_reference(text, start) and not value.startswith("+"):
                break
            # A weak shape must be the whole run (5555 5555 5555 of a 16-digit number is no
            # phone) or end where a remark in brackets starts: "2125550173 (24h)".
            if shape == "weak" and (
                (end != m.end() and not text.startswith(" (", end))
                or not (
                    _PHONE_WORD_BEFORE.search(_line_before(text, start))
                    or _PHONE_WORD_AFTER.match(text[end : end + 24])
                )
            ):
                break
            yield PiiMatch("phone", value, start, end)
            break


# Surer kinds first: where matches overlap, an IBAN's digits are not also a card or a phone.
_DETECTORS = (_emails, _ibans, _cards, _ssns, _ninos, _ip_addresses, _phones)


def find_pii(text: str) -> list[PiiMatch]:
    """Every piece of personal data in `text`, in order; overlaps go to the surer kind."""
    taken: list[PiiMatch] = []
    for detector in _DETECTORS:
        for match in detector(text):
            if all(match.end <= t.start or match.start >= t.end for t in taken):
                taken.append(match)
    return sorted(taken, key=lambda m: m.start)


_NUMBER_RUN = re.compile(r"\d(?:[ ().-]{0,3}\d)*")


def _quoted_number(match: PiiMatch, numbers: set[str]) -> bool:
    """Whether `numbers` hold `match`'s; a phone's may differ by country code or trunk 0."""
    key = match.canonical()
    if key in numbers or match.kind != "phone":
        return key in numbers
    for number in numbers:
        short, long = sorted((key.lstrip("0"), number.lstrip("0")), key=len)
        if len(short) >= 7 and long.endswith(short) and len(long) - len(short) <= 3:
            return True
    return False


def _numbers_in(sources: Sequence[str]) -> set[str]:
    """The digits of every run of up to 8 digit groups in `sources`, however separated."""
    numbers: set[str] = set()
    for source in sources:
        for run in _NUMBER_RUN.findall(source):
            groups = re.findall(r"\d+", run)
            numbers.update(
                "".join(groups[i:j])
                for i in range(len(groups))
                for j in range(i + 1, min(i + 8, len(groups)) + 1)
            )
    return numbers


def leaked_pii(answer: str, sources: Sequence[str]) -> list[PiiMatch]:
    """Personal data in `answer` that none of `sources` contains.

    Quoting a cited chunk is allowed: an email or phone number copied from a source is not a
    leak, whether or not the source spelt it the same way (020… against +44 20…). Numbers in a
    source count even where the detector would not call them personal there.

    >>> leaked_pii("Write to hr@acme.example.", ["HR: hr@acme.example"])
    []
    """
    known = {(m.kind, m.canonical()) for source in sources for m in find_pii(source)}
    numbers = _numbers_in(sources)
    return [
        m
        for m in find_pii(answer)
        if (m.kind, m.canonical()) not in known
        and not (m.kind in _DIGIT_KINDS and _quoted_number(m, numbers))
    ]
