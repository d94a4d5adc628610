"""Hand-written hostile PII, every kind in the disguises that slipped past the first scrubber and
their relatives: each is replaced by its placeholder, the text around it is kept as written, and
ordinary text that merely resembles PII is left alone."""

from __future__ import annotations

import pytest

from training.pii import scrub_text

# (text, the PII inside it, the kind it is counted as)
HOSTILE = [
    # email: internationalised, zero-width split, quoted, full-width, obfuscated, in markup
    ("write to josé.müller@exämple.de today", "josé.müller@exämple.de", "email"),
    ("почта: иван@пример.рф", "иван@пример.рф", "email"),
    ("mail 用户@例子.中国 ok", "用户@例子.中国", "email"),
    ("mail jane\u200b@example.com now", "jane\u200b@example.com", "email"),
    # (an accent typed as a combining mark; a letter NFKC splits into "l" and a middle dot)
    ("mail jose\u0301@exa\u0308mple.de now", "jose\u0301@exa\u0308mple.de", "email"),
    ("mail a@aŀ.com now", "a@aŀ.com", "email"),
    ("mail ja\u200dne@exa\u2060mple.com now", "ja\u200dne@exa\u2060mple.com", "email"),
    ('send to "john doe"@example.com please', '"john doe"@example.com', "email"),
    ("mail ｊａｎｅ＠ｅｘａｍｐｌｅ．ｃｏｍ now", "ｊａｎｅ＠ｅｘａｍｐｌｅ．ｃｏｍ", "email"),
    ("mail jane [at] example [dot] com now", "jane [at] example [dot] com", "email"),
    ("mail jane(at)example.com now", "jane(at)example.com", "email"),
    ("mail jane at example dot com now", "jane at example dot com", "email"),
    ("href=mailto:jane%40example.com>", "jane%40example.com", "email"),
    ("mail jane&#64;example.com now", "jane&#64;example.com", "email"),
    ("<a>jane@example.com</a>", "jane@example.com", "email"),
    # phone: the CI failure, 00 and 011 prefixes, full-width and other-script digits, dots
    (" +44 7400 123456 0", "+44 7400 123456", "phone"),
    ("call 0044 7400 123456 now", "0044 7400 123456", "phone"),
    ("call 011 44 20 7946 0958", "011 44 20 7946 0958", "phone"),
    ("call ＋４４ ７４００ １２３４５６ now", "＋４４ ７４００ １２３４５６", "phone"),
    ("call +٤٤ ٧٤٠٠ ١٢٣٤٥٦ now", "+٤٤ ٧٤٠٠ ١٢٣٤٥٦", "phone"),
    ("call +44\u200b7400\u200b123456 now", "+44\u200b7400\u200b123456", "phone"),
    ("call +49.30.123456.78 now", "+49.30.123456.78", "phone"),
    ("call 415.555.0132 ok", "415.555.0132", "phone"),
    ("tel:+14155550132", "+14155550132", "phone"),
    ("call me on07400123456", "07400123456", "phone"),
    ("ref 7 +44 7400 123456 9", "+44 7400 123456", "phone"),
    # card: dots, spaced dashes, underscores, full-width, zero-width, digits around it
    ("card 4111.1111.1111.1111 ok", "4111.1111.1111.1111", "card"),
    ("card 4111 - 1111 - 1111 - 1111 ok", "4111 - 1111 - 1111 - 1111", "card"),
    ("card 4111_1111_1111_1111 ok", "4111_1111_1111_1111", "card"),
    ("card ４１１１ １１１１ １１１１ １１１１ ok", "４１１１ １１１１ １１１１ １１１１", "card"),
    ("card 4111\u200b1111\u200b1111\u200b1111 ok", "4111\u200b1111\u200b1111\u200b1111", "card"),
    ("card 4111–1111–1111–1111 ok", "4111–1111–1111–1111", "card"),
    ("qty 3 card 4111 1111 1111 1111 exp 12", "4111 1111 1111 1111", "card"),
    ("amex 3782 822463 10005", "3782 822463 10005", "card"),
    ("card4111111111111111x", "4111111111111111", "card"),
    # IBAN: lower case, dashes, dots, glued to the next word, no separators
    ("iban gb82west12345698765432 ok", "gb82west12345698765432", "iban"),
    ("iban GB82-WEST-1234-5698-7654-32 ok", "GB82-WEST-1234-5698-7654-32", "iban"),
    ("iban de89.3704.0044.0532.0130.00 ok", "de89.3704.0044.0532.0130.00", "iban"),
    ("iban DE89370400440532013000please", "DE89370400440532013000", "iban"),
    ("ibanNL91ABNA0417164300", "NL91ABNA0417164300", "iban"),
    ("iban FR14 2004 1010 0505 0001 3M02 606 ok", "FR14 2004 1010 0505 0001 3M02 606", "iban"),
    # SSN: bare 9 digits, spaces, dots, full-width
    ("ssn 078051121 on file", "078051121", "ssn"),
    ("ssn 123 45 6789 on file", "123 45 6789", "ssn"),
    ("ssn 123.45.6789 on file", "123.45.6789", "ssn"),
    ("ssn １２３-４５-６７８９ on file", "１２３-４５-６７８９", "ssn"),
    # IP
    ("host １９２.１６８.１.１０ down", "１９２.１６８.１.１０", "ip"),
    ("host [2001:db8::ff00:42:8329]:443", "2001:db8::ff00:42:8329", "ip"),
    # secrets: cloud secret keys, unsigned JWTs, PGP and truncated PEM, keyword forms
    (
        "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "secret",
    ),
    (
        "key wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY here",
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "secret",
    ),
    ("AccountKey=Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5MA==;", "Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5MA==", "secret"),
    ("id keyAKIAIOSFODNN7EXAMPLE", "AKIAIOSFODNN7EXAMPLE", "secret"),
    (
        "jwt eyJhbGciOiJub25lIn0.eyJzdWIiOiIxMjM0NTY3ODkwIn0. end",
        "eyJzdWIiOiIxMjM0NTY3ODkwIn0",
        "secret",
    ),
    (
        "jwt eyJhbGciOiJub25lIn0.eyJzdWIiOiIxMjM0NTY3ODkwIn0 end",
        "eyJzdWIiOiIxMjM0NTY3ODkwIn0",
        "secret",
    ),
    (
        "-----BEGIN PGP PRIVATE KEY BLOCK-----\n\nlQOYBF0abcdefghijklmnop\n=abcd\n"
        "-----END PGP PRIVATE KEY BLOCK-----",
        "lQOYBF0abcdefghijklmnop",
        "secret",
    ),
    ("-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAx7", "MIIEowIBAAKCAQEAx7", "secret"),
    ("here: -----BEGIN OPENSSH PRIVATE KEY----- b3BlbnNzaC1rZXkt", "b3BlbnNzaC1rZXkt", "secret"),
    ("my password is hunter2", "hunter2", "secret"),
    ("My Password was Tr0ub4dor&3.", "Tr0ub4dor&3", "secret"),
    ('the password is "correct horse"', "correct horse", "secret"),
    ("password: hunter2", "hunter2", "secret"),
    ('{"password": "s3cr3t!"}', "s3cr3t!", "secret"),
    ("pwd=abcd1234", "abcd1234", "secret"),
    ("my passcode is 482913", "482913", "secret"),
    ("my PIN is 4829", "4829", "secret"),
    ("cvv: 123", "123", "secret"),
    ("Authorization: Basic dXNlcjpwYXNzd29yZA==", "dXNlcjpwYXNzd29yZA==", "secret"),
    (
        "token hf_abcdefghijklmnopqrstuvwxyzABCDEFGH",
        "hf_abcdefghijklmnopqrstuvwxyzABCDEFGH",
        "secret",
    ),
    ("sk-ant-api03-abcdefghijklmnopqrstuvwx", "sk-ant-api03-abcdefghijklmnopqrstuvwx", "secret"),
]


@pytest.mark.parametrize(("text", "value", "kind"), HOSTILE)
def test_hostile_pii_is_scrubbed(text: str, value: str, kind: str) -> None:
    """Each disguised PII value is gone, counted under its kind, and the prose around it is
    kept exactly as written."""
    assert value in text
    result = scrub_text(text)
    assert value not in result.text
    assert kind in result.counts
    _, _, tail = text.partition(value)
    if tail.startswith(" "):
        assert result.text.endswith(tail)
    assert scrub_text(result.text).text == result.text


@pytest.mark.parametrize(
    "text",
    [
        "The passcode isn't working for me.",
        "My passcode was denied.",
        "my password is long",
        "my password is not working",
        "I forgot my PIN",
        "my pin is blocked since 2023",
        "The key: keep it safe",
        "meet me at noon dot",
        "released 2026-10-14 09:13:22 with ticket 88213",
        "order 1234567812345678 is pending",
        "invoice 00012345 and ref 998877",
        "version 1.2.3 costs 12.50 on 12/03/2024",
        "top10 mp3 files, covid19 update",
        "risk-management-framework-overview-document",
        "ＡＢＣ full-width letters and ﬁne ligatures stay",
        "naïve café résumé",
    ],
)
def test_look_alikes_survive(text: str) -> None:
    """Ordinary text that only resembles PII (codes, dates, words about passwords, non-ASCII
    prose) comes out exactly as it went in."""
    assert scrub_text(text).text == text


def test_prose_around_folded_pii_keeps_its_own_characters() -> None:
    """Folding is only for matching: full-width letters and ligatures outside the PII survive."""
    text = "ＡＢＣ ﬁle: ｊａｎｅ＠ｅｘａｍｐｌｅ．ｃｏｍ ①"
    assert scrub_text(text).text == "ＡＢＣ ﬁle: <EMAIL> ①"
