"""PII scrubbing: emails, phone numbers, card numbers, bank account numbers (IBAN), US social security
numbers, IP addresses, URL credentials and secrets (API keys, access tokens, JSON Web Tokens, passwords
and keys assigned in code and config) in a text replaced by placeholders (``scrub_pii``), as the paper filtered personally identifiable information
from API prompts before training. Curation (:mod:`.curate`) scrubs every prompt before deduplication.

Each kind is a pattern plus, where a pattern alone would take ordinary numbers, a check of the
candidate (IPv6 with at least three groups, so Python slices stay; cards by issuer digit and the
Luhn checksum; plausible phone lengths). The patterns see other Unicode spaces as spaces and skip
zero-width characters; the text outside a match is returned byte for byte.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from typing import Any

PII_KINDS = ("email", "phone", "card", "iban", "ssn", "ip", "credentials", "secret")


# scheme://user[:password]@host -> scheme://[CREDENTIALS]@host
# Linear time: a scheme is tried from its last possible start (a letter at the run's start or after "+", "." or
# "-"), as a scan from each earlier start to the "://" would make a long hyphenated run quadratic; the text
# replaced is the same, as the run before that start is kept. Every repeat is possessive ("*+", "++").
_CREDENTIALS = re.compile(r"\b([A-Za-z](?:[A-Za-z0-9]|[+.-](?![A-Za-z]))*+://)[^\s/@?#]++@(?=[^\s/@])")

# Secrets: the value of a URL query parameter that names one (?api_key=..., &access_token=...),
# a bearer token, and keys in the shapes their issuers give them (OpenAI sk-..., GitHub ghp_... and
# github_pat_..., AWS AKIA..., Google AIza..., Slack xox?-..., Hugging Face hf_..., Stripe sk_live_/rk_live_
# (and _test_), GitLab glpat-..., npm npm_...). Long enough that words and identifiers never match.
# The value ends where the URL does: at a quote, bracket or angle bracket closing it in code or prose, and
# before the sentence's final punctuation; a placeholder ({api_key}, <your-key>) has no value to replace.
_SECRET_PARAM = re.compile(r"([?&;](?:access_token|refresh_token|id_token|token|api_key|apikey|api-key|key|"
                           r"secret|client_secret|password|passwd|pwd|sig|signature|auth|session|sessionid)=)"
                           r"[^&#;\s\"'`<>()\[\]{}]*[^&#;\s\"'`<>()\[\]{}.,:!?]", re.IGNORECASE)
_BEARER = re.compile(r"\b(Bearer\s+)[A-Za-z0-9._~+/-]{16,}=*")
_KEY_SHAPES = re.compile(r"(?<![\w-])(?:sk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,}|gh[pousr]_[A-Za-z0-9]{30,}"
                         r"|github_pat_[A-Za-z0-9_]{22,}|(?:AKIA|ASIA)[0-9A-Z]{16}|AIza[0-9A-Za-z_-]{35}"
                         r"|xox[abposr]-[A-Za-z0-9-]{10,}|hf_[A-Za-z0-9]{30,}|[sr]k_(?:live|test)_[A-Za-z0-9]{20,}"
                         r"|glpat-[A-Za-z0-9_-]{20,}|npm_[A-Za-z0-9]{36})(?![\w-])")

# A JSON Web Token anywhere (three base64url parts, the first two JSON objects: "eyJ"), not only after Bearer.
_JWT = re.compile(r"(?<![\w-])eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}(?![\w-])")
# A quoted value given to a name that holds a secret, in code and config (password = "hunter2",
# "api_key": "...", DB_PASSWORD: 'x9!k', self.client_secret="...", AWS_SECRET_ACCESS_KEY). Placeholders have no value to
# replace: an empty or one-character-repeated value (****), one with {, <, $ or space, or "your...".
_SECRET_NAME = (r"(?:password|passwd|pwd|passphrase|secret|api[_-]?key|apikey|secret[_-]?key|private[_-]?key"
                r"|client[_-]?secret|(?:access|auth|refresh|api|bearer|session|id)[_-]?token)")
# A name then the rest of its identifier (SECRET_ACCESS_KEY, password_hash), which stops before another name that
# could end the identifier (password_api_key is matched from api_key): a scan from every name in a long
# password_password_... run to its end would be quadratic. The text replaced is the same.
_SECRET_NAMES = (rf"{_SECRET_NAME}(?:[_-](?:[A-Za-z0-9]|[_-](?!{_SECRET_NAME}(?:[_-]|(?![A-Za-z0-9_-]))))*+)?+")
_SECRET_QUOTED = re.compile(rf"(?i)((?<![A-Za-z0-9]){_SECRET_NAMES}[\"']?[ \t]*[:=][ \t]*(?P<q>[\"']))"
                            rf"(?P<value>[^\"'\s{{}}<>$]{{4,}}?)(?P=q)")
# The same in .env, .ini and shell lines, unquoted: NAME=value alone on its line (export NAME=value too).
_SECRET_LINE = re.compile(rf"(?im)^([ \t]*(?:export[ \t]+)?[\w.-]*?(?<![A-Za-z0-9]){_SECRET_NAMES}[ \t]*=[ \t]*)"
                          rf"(?P<value>[^\s\"'`$\[\]{{}}<>]{{4,}})[ \t]*$")

# Bank account numbers: IBANs (two letters, two check digits, up to 30 letters and digits, printed in groups
# of four or unbroken), checked by length and the ISO 13616 mod-97 checksum.
_IBAN = re.compile(r"(?<![\w-])[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?(?![\w-])")

# Domain labels may be non-ASCII (jörg@müller.de, IDN top-level domains); no "_" in them. An SSH
# remote (git@github.com:org/repo.git) is not a person's address. A label is possessive ("++"): only a "." can follow it.
_EMAIL = re.compile(r"(?<![\w.%+-])(?!git@[^\s@:]+:\S)[\w.%+-]+@(?:[^\W_]|-)++(?:\.(?:[^\W_]|-)++)*\.[^\W\d_]{2,}\b")

# IPv6 candidates (checked by _valid_ipv6), optionally ending in an IPv4 part.
_IPV6 = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:\d{1,3}(?:\.\d{1,3}){3}|[0-9A-Fa-f]{1,4})?"
                   r"(?![\w:]|\.\w)")
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
# A four-part version right after "version" (AssemblyVersion("1.0.0.0"), "version 1.2.3.4", <Version>) is
# matched with that word so that _not_a_version can leave it.
_IPV4 = re.compile(rf"(?P<version>(?i:version|\bver\.?)[\s:=(\"'>]{{0,3}})?(?<![\w.]){_OCTET}(?:\.{_OCTET}){{3}}"
                   rf"(?![\w]|\.\d)")

# 13-19 digits: unbroken, or in the groups printed on cards (4-4-4-4[-3], 4-6-5, 4-6-4)
# with one consistent separator; _card_ok then asks for a card's first digit and checksum.
_CARD = re.compile(
    r"(?<![\w+.-])(?:"
    r"\d{13,19}"
    r"|\d{4}(?P<s>[ -])\d{4}(?P=s)\d{4}(?P=s)\d{1,4}(?:(?P=s)\d{1,3})?"
    r"|\d{4}(?P<t>[ -])\d{6}(?P=t)\d{4,5}"
    r")(?![\w-]|\.\d)"
)

# US social security numbers, 123-45-6789 or 123 45 6789 (one separator), within the numbers the
# SSA issues: no area 000, 666 or 900-999, no group 00, no serial 0000. A colon before one is refused
# only after a digit (a time or ratio), so a label glued to it ("SSN:123-45-6789") is no shield.
_SSN = re.compile(r"(?<![\w+.,/-])(?<!\d:)(?!000|666|9\d\d)\d{3}(?P<s>[ -])(?!00)\d\d(?P=s)(?!0000)\d{4}(?![\w-]|[.,]\d)")

# International numbers start with +country or 00country (checked by _phone_digits_ok);
# after "00" the number may not start with 0 ("0041 0042 0043" lists code points).
# US-style ones need separators: (555) 123-4567, 555-123-4567, 555.123.4567, 1-555-123-4567.
# Their digit groups are possessive ("{1,5}+"): a group takes five digits when there are five, so a run of digits is
# cut into as few groups as it can be. Backtracking tried every other cut of a run too, thousands of them when no cut
# fits the five groups (a "+" or "00" before some 30 digits: 1 MB of such runs took some 11 s); the match is the same,
# as a cut into fewer groups reaches every run end a cut into more reaches, and the match ends at the end of a run.
_PHONE_INTL = re.compile(r"(?<![\w+])\+\d{1,3}(?:[ .-]?\(\d{1,4}\))?(?:[ .-]?\d{1,5}+){1,5}(?!\d)")
_PHONE_00 = re.compile(r"(?<![\w+.,:/-])00[1-9]\d{0,2}(?:[ .-]?\(\d{1,4}\))?[ .-][1-9]\d{0,4}+(?:[ .-]?\d{1,5}+){0,4}"
                       r"(?!\d)")
_PHONE_US = re.compile(r"(?<![\w+-])(?:1[ .-])?(?:\(\d{3}\)[ .-]?|\d{3}[ .-])\d{3}[ .-]\d{4}(?![\w-]|\.\d)")
# National numbers dialled with a trunk 0, in separated groups (checked by _national_digits_ok):
# FR 01 23 45 67 89; an area code then one or two groups with one separator, UK 020 7946 0958,
# 07700 900123, DE 030 12345678, JP 03-1234-5678, AU 0412 345 678; AU (02) 1234 5678.
# The digit after the 0 is not 0, and "-", ".", "/", "," or a digit's ":" before it is refused, so
# dates (2023-01-15, 15.01.2023), times and decimals never start one ("Tel:020 7946 0958" does).
_PHONE_NATIONAL = re.compile(
    r"(?<![\w+.,/-])(?<!\d:)(?:"
    r"0[1-9](?P<f>[ .-])\d\d(?:(?P=f)\d\d){3}(?!(?P=f)\d)"
    r"|0[1-9]\d{0,4}(?P<n>[ .-])\d{2,8}(?:(?P=n)\d{2,8})?"
    r"|\(0[1-9]\d{0,3}\) ?\d{2,8}(?:(?P<p>[ .-])\d{2,8})?"
    r")(?![\w-]|[.,]\d)"
)


def _digits(candidate: str) -> str:
    return "".join(str(int(c)) for c in candidate if c.isdecimal())


def _valid_ipv6(candidate: str) -> bool:
    if not any(c.isdigit() for c in candidate):
        return False  # "::" or "a::b" (in code, say) is more likely punctuation than an address
    # At least three groups (an IPv4 tail counts as two): a Python slice has at most two numbers
    # around its "::" (nums[::2], a[1::2], d[::10]), while an address that names a host has a
    # routing prefix and an interface part. Left alone with the slices: ::1, fe80::1, 2001:db8::.
    if len([g for g in candidate.split(":") if g]) + ("." in candidate) < 3:
        return False
    try:
        ipaddress.IPv6Address(candidate)
    except ValueError:
        return False
    return True


def _not_a_version(candidate: str) -> bool:
    return not candidate[:1].isalpha()  # a match that starts with its "version" word


def _secret_value_ok(candidate: str, pattern: re.Pattern[str]) -> bool:
    value = pattern.search(candidate).group("value")
    if value.startswith("[") and value.endswith("]"):  # already scrubbed ([SECRET]) or redacted
        return False
    return len(set(value)) > 1 and not value.lower().startswith("your")


def _iban_ok(candidate: str) -> bool:
    code = candidate.replace(" ", "")
    if not 15 <= len(code) <= 34:
        return False
    moved = code[4:] + code[:4]  # the country and check digits go last; letters count A=10 ... Z=35
    return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, d in enumerate(int(c) for c in reversed(digits)):
        total += (d * 2 - 9 if d > 4 else d * 2) if i % 2 else d
    return total % 10 == 0


def _card_ok(candidate: str) -> bool:
    # Card numbers start with 2-6 (Mastercard/Mir 2 and 5, Amex/Diners/JCB 3, Visa 4, Discover/
    # UnionPay/Maestro 6) and pass the Luhn checksum; 15! = 1307674368000, 2**63 - 1, millisecond
    # timestamps (1...), ISBN-13 (978/979...), 20230115123045 and 1000-2000-3000-4000 do not both.
    digits = _digits(candidate)
    return digits[0] in "23456" and _luhn_ok(digits)


def _phone_digits_ok(candidate: str) -> bool:
    digits = _digits(candidate)
    if candidate.startswith("00"):
        digits = digits[2:]  # the international call prefix
    if not 8 <= len(digits) <= 15:
        return False
    if digits[0] in "17":
        # +1 (North America) and +7 (Russia, Kazakhstan) are followed by ten digits, and a North
        # American area code starts with 2-9: "+10 20 30 40" is a list of numbers, not a phone.
        return len(digits) == 11 and (digits[0] == "7" or digits[1] in "23456789")
    return True


def _national_digits_ok(candidate: str) -> bool:
    if not 10 <= len(_digits(candidate)) <= 12:
        return False
    groups = re.findall(r"\d+", candidate)
    if len(groups) == 5:
        return True  # the French pairs
    # After the area code a subscriber number does not start with 0, and its groups are not all
    # as wide as the area code: "0123 0456 0789" and "0800 1200 1600" are lists of numbers.
    return groups[1][0] != "0" and len({len(g) for g in groups}) > 1


# (kind, pattern, replacement, extra check on the matched text or None), applied in order:
# credentials before emails (user:pass@host looks like an address), addresses
# and card numbers before phone numbers (which would otherwise eat their digits).
_RULES: tuple[tuple[str, re.Pattern[str], str, Any], ...] = (
    ("credentials", _CREDENTIALS, r"\1[CREDENTIALS]@", None),
    ("secret", _SECRET_PARAM, r"\1[SECRET]", None),
    ("secret", _BEARER, r"\1[SECRET]", None),
    ("secret", _KEY_SHAPES, "[SECRET]", None),
    ("secret", _JWT, "[SECRET]", None),
    ("secret", _SECRET_QUOTED, r"\1[SECRET]\g<q>", lambda s: _secret_value_ok(s, _SECRET_QUOTED)),
    ("secret", _SECRET_LINE, r"\1[SECRET]", lambda s: _secret_value_ok(s, _SECRET_LINE)),
    ("iban", _IBAN, "[IBAN]", _iban_ok),
    ("email", _EMAIL, "[EMAIL]", None),
    ("ip", _IPV6, "[IP]", _valid_ipv6),
    ("ip", _IPV4, "[IP]", _not_a_version),
    ("card", _CARD, "[CARD]", _card_ok),
    ("ssn", _SSN, "[SSN]", None),
    ("phone", _PHONE_INTL, "[PHONE]", _phone_digits_ok),
    ("phone", _PHONE_00, "[PHONE]", _phone_digits_ok),
    ("phone", _PHONE_US, "[PHONE]", None),
    ("phone", _PHONE_NATIONAL, "[PHONE]", _national_digits_ok),
)

# The patterns see the text with other spaces read as " " (no-break, narrow no-break, figure,
# thin, ideographic), no-break hyphens as "-", fullwidth ASCII as ASCII, and zero-width
# characters and soft hyphens left out, so "555\u00a0123\u00a04567" or "jane\u200b@example.com"
# are found; the text outside what they match is kept as it was.
ZERO_WIDTH = "\u00ad\u180e\u200b\u200c\u200d\u2060\ufeff"
_AS_SPACE = "\u00a0\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u202f\u205f\u3000"
_SEEN_AS = {**{ord(c): None for c in ZERO_WIDTH}, **{ord(c): " " for c in _AS_SPACE},
            0x2010: "-", 0x2011: "-", **{c: c - 0xFEE0 for c in range(0xFF01, 0xFF5F)}}
_NEEDS_VIEW = re.compile("[" + "".join(chr(c) for c in sorted(_SEEN_AS) if c < 0xFF01) + "\uff01-\uff5e]")


def _view(text: str) -> tuple[str, list[int]]:
    """What the patterns see, and the index in ``text`` of each of its characters."""
    chars, where = [], []
    for i, c in enumerate(text):
        seen = _SEEN_AS.get(ord(c), c)
        if seen is not None:
            chars.append(seen if isinstance(seen, str) else chr(seen))
            where.append(i)
    return "".join(chars), where


def scrub_pii(text: str) -> tuple[str, dict[str, int]]:
    """``text`` with personal data replaced, and how many of each kind were found.

    Kinds: ``email`` -> ``[EMAIL]``, ``phone`` -> ``[PHONE]``, ``card`` ->
    ``[CARD]``, ``iban`` -> ``[IBAN]``, ``ssn`` -> ``[SSN]``, ``ip`` (IPv4 and IPv6) -> ``[IP]``,
    ``credentials`` in URLs -> ``scheme://[CREDENTIALS]@host``, ``secret``
    (a secret query parameter's value, a bearer token, an API key, a JWT, the value of a
    password or key in code and config) -> ``[SECRET]``. Only kinds that occur are in the counts.
    """
    counts: Counter[str] = Counter()
    for kind, pattern, replacement, check in _RULES:
        if not _NEEDS_VIEW.search(text):
            def substitute(m: re.Match[str], kind: str = kind, replacement: str = replacement,
                           check: Any = check) -> str:
                if check is not None and not check(m.group(0)):
                    return m.group(0)
                counts[kind] += 1
                return m.expand(replacement)
            text = pattern.sub(substitute, text)
            continue
        seen, where = _view(text)
        pieces, done = [], 0
        for m in pattern.finditer(seen):
            if m.end() == m.start() or (check is not None and not check(m.group(0))):
                continue
            start, end = where[m.start()], where[m.end() - 1] + 1
            pieces += [text[done:start], m.expand(replacement)]
            done = end
            counts[kind] += 1
        text = "".join(pieces) + text[done:]
    return text, dict(counts)
