"""The built-in "contacts" task: a seeded generator of extraction examples and a loader for the shipped files.

The demo teaches a small instruct model to pull name, email, phone, company and city out of free text and
reply with only JSON. What must generalise is the extraction, not the wording, so the generator mixes many
styles (signatures, CRM lines, voicemails, forms...) and keeps some styles and pool entries for the eval split
alone. A detail counts as given only when its value was really rendered into the message (tracked with
markers until the end), so a template that leaves a detail out can never produce a wrong label.

Template mini-language (tiny, so that 35 styles fit in one readable module):
``{key}`` a contact detail (or ``first``, the contact's first name) or an extra such as ``{date}``;
``{a|b|c}`` a random choice of literal texts (``{{other}|team}`` to choose a value; an option naming a
detail that is not given is skipped);
``[...]`` optional: kept iff the details it names are given, or at random when it names none (distractors);
``<<head||seg||seg>>`` joins the segments whose details are given, head = ``sep``, ``pre^sep`` or
``pre^sep^post``, prefixed by flags: ``!`` at least one segment is required, ``~`` shuffle the segments.
A detail written outside ``[...]`` and ``<<...>>`` is required: the style is skipped for contacts without it.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import random
import re
import unicodedata
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from lorakit.errors import DataError

SYSTEM_PROMPT = (
    "Extract the contact details from the user's message. Reply with only a JSON object with the keys "
    "name, email, phone, company, city; use null for any detail that is not given."
)
KEYS: tuple[str, ...] = ("name", "email", "phone", "company", "city")
Split = Literal["train", "eval"]
DEFAULT_SEEDS: dict[str, int] = {"train": 20240611, "eval": 77031}
DEFAULT_SIZES: dict[str, int] = {"train": 1000, "eval": 200}
EVAL_ONLY_SHARE = 0.4  # chance that an eval example takes its style / a pool entry from the eval-only sets
MAX_USER_CHARS = 480  # with system prompt, reply and ChatML tags this keeps examples under ~900 chars
PRESENCE: dict[str, float] = {"name": 0.76, "email": 0.78, "phone": 0.76, "company": 0.78, "city": 0.74}
_TRACKED = (*KEYS, "first")

# Value pools, "key: a, b, c" (two spaces continue a line). "key/eval" entries appear in the eval split only.
# Kept disjoint, and no city hides inside a company or name, so that a null label can be checked for leaks.
# Phone patterns: '#' is any digit, 'N' a digit 2-9. Email local parts: f/l first/last, i/j their initials.
_POOL_SPEC = """
first: Ana, José, Zoë, Łukasz, Søren, François, Øyvind, Maria, James, Priya, Wei, Yuki, Ahmed, Fatima, Olga,
  Ingrid, Chloé, Mateo, Lucía, Kwame, Amara, Hiroshi, Mei, Raj, Aisha, Liam, Emma, Noah, Sofia, Lars, Jörg,
  Siobhán, Niamh, Tomasz, Agnieszka, Dmitri, Elena, Giulia, Marco, Pedro, Camila, Diego, Min-jun, Arjun,
  Omar, Leila, Hannah, Ben, Grace, Daniel, Nora, Hugo, Inès, Bjørn, Ayşe, Emre, Thảo, Minh, Chidi, Zanele,
  Kofi, Rosa, Pablo, Marta, Katarzyna, Anne-Marie, Jean-Luc, Renée, Sébastien, Dagný, Sven, Kenji, Ravi
first/eval: Ximena, Håkon, Anaïs, Tariq, Nkechi, Eun-ji, Radosław, Mireille, Thiago, Kalani, Saoirse, Dagmar,
  Farida, Joaquín, Yaw, Ilse, Bartosz, Keiko, Aleksander, Çağla, Oisín
last: Souza, Müller, Nguyễn, García, Kowalski, Nowak, Jensen, Hansen, Dubois, Lefèvre, Rossi, Bianchi, Smith,
  Johnson, Brown, O'Connor, McAllister, Patel, Sharma, Khan, Chen, Wang, Tanaka, Sato, Kim, Park, Okafor,
  Mensah, Adeyemi, Ivanova, Petrov, Schmidt, Fischer, Weiß, Novák, Horváth, Yılmaz, Demir, Andersson,
  Lindqvist, Virtanen, Jónsdóttir, van der Berg, de Souza, Fernández, López, Pereira, Costa, Silva, Murphy,
  Walsh, Cohen, Haddad, Mansour, Tran, Pham, Abiodun, Moreau, Ødegaard, Żukowski, Ferraro, Singh
last/eval: Dąbrowski, Østergaard, Gonçalves, Nakamura, Okonkwo, Lindström, Ferreira, Papadopoulos, Çelik,
  Szabó, Kristensen, Quispe, Achterberg, Mwangi, Rahman, Zhou, Castellanos, Fitzgerald, Häkkinen, Ó Briain
company: Acme, Blue Fern Analytics, K2 Labs, Northwind Traders, Globex, Initech, Brightline Health,
  Solaris Energy, Papier & Stift, Nordlicht, Kestrel Systems, Tidewater Foods, Redwood Capital, Quantix,
  Helios Robotics, Pixel Harbor, Lumen Bio, Oakridge Consulting, Vértice Digital, Café Central Roasters,
  Sørensen Marine, Zeta Dynamics, Bluebird Travel, Copperleaf, Atlas Freight, Greenfield Organics,
  Silverline Media, Mosaic Learning, Fjord Analytics, Cobalt Security, Maple & Birch, Orbital Works,
  Saffron Kitchen, Praxis Legal, Halcyon Games, Ironbridge Partners, Verde Textiles, Nimbus Cloud,
  Tandem Bikes, Bytewise, Lighthouse Studios, Quill & Ink, Stratos Aero, Yellowtail Software, Hexagon Data,
  Crescent Pharma, Juniper Books, DataNest, Cloudberry, Vireo Labs, Novacore, Brook & Stone,
  Müller Maschinenbau, 3Dlogic
company/eval: Foxglove Robotics, Tern Aviation, Marigold Health, Obsidian Works, Pelican Payments,
  Kaleido Studio, Ridgeback Security, Ångström Optics, Quokka Labs, Saltmarsh Energy, Zenith Mobility,
  Harbor & Finch, Élan Cosmetics, Drumlin Analytics, Q9 Systems
suffix: Inc, Inc., GmbH, Ltd, Ltd., S.A., LLC, & Co, AG, B.V., AB, Oy, S.r.l., Pty Ltd, plc, SAS, Group, Corp.
suffix/eval: K.K., S.p.A., Sp. z o.o., ApS, Ltda.
city: New York, San Francisco, Toronto, Chicago, Austin, Seattle, London, Manchester, Dublin, Edinburgh,
  Berlin, Hamburg, München, Düsseldorf, Zürich, Vienna, Paris, Lyon, Madrid, Barcelona, Córdoba, Lisbon,
  Porto, Amsterdam, Brussels, Copenhagen, Malmö, Göteborg, Stockholm, Oslo, Helsinki, Reykjavík, Warsaw,
  Kraków, Łódź, Prague, Budapest, Athens, Istanbul, Tel Aviv, Dubai, Nairobi, Lagos, Cape Town, Mumbai,
  Bangalore, Singapore, Tokyo, Osaka, Seoul, Sydney, Melbourne, Auckland, São Paulo, Bogotá, Buenos Aires,
  Mexico City, Montréal, Vancouver, Hanoi, Ho Chi Minh City, Jakarta
city/eval: Gdańsk, Tromsø, Köln, Brasília, Medellín, Québec City, Guadalajara, Valparaíso, Aarhus, Leipzig,
  Bologna, Seville, Kyoto, Busan, Chennai, Accra, Kigali, Perth, Wellington, Denver, Glasgow, Antwerp, Tallinn
phone: +1 (N##) N##-####, N##.N##.####, (N##) N##-####, N##-N##-####, +1 N## N## ####, +44 20 7### ####,
  +44 (0)20 7### ####, 07### ######, +49 30 #######, 0049 30 #######, 030/#######, +49 (0)89 ### ####,
  +33 6 ## ## ## ##, 06 ## ## ## ##, +34 9## ### ###, +61 2 #### ####, +46 8 ### ### ##, +31 20 ### ####
phone/eval: +81 3-####-####, +91 9#### #####, +55 11 9####-####, 1-800-N##-####, +353 1 ### ####,
  +48 12 ### ## ##, N## N## ####, +41 44 ### ## ##
extension: ext. ##, x###, ext ##, ext. #
local: f.l, il, f_j, f, l.f, i.l, f.l##, f##, fj, fl
local/eval: f-l, li, f.j
freemail: gmail.com, outlook.com, yahoo.co.uk, proton.me, gmx.de, web.de, hotmail.fr, icloud.com, fastmail.com
freemail/eval: zoho.com, hey.com, posteo.de
tld: .com, .io, .co, .net, .ai, .dev, .com, .com
tld_by_form: GmbH=.de, AG=.ch, Ltd=.co.uk, Ltd.=.co.uk, plc=.co.uk, S.A.=.es, AB=.se
title: Head of Sales, CTO, Product Manager, Account Executive, Procurement Lead, Marketing Director,
  Data Engineer, Office Manager, Founder, Partner, Operations Lead, Research Scientist, CFO, Designer
event: PyCon, the fintech meetup, Web Summit, DevDays, KubeCon, the trade fair, the AI expo, SaaS Connect
topic: pricing, the Q3 renewal, the API integration, onboarding, the pilot project, bulk orders,
  a partnership, the open role, licensing, the catering order, a refund, the data migration
date: 12 March, March 12, 2024-03-12, 12/03/2024, Tue 14 May, next Thursday, 3 Oct, 29.11.2024, Friday
time: 10:30, 3pm, 14:00, 9.15am, 16:45, noon
order: #48213, ORD-2024-0932, INC-2231, PO 77810, T-10452, #5519, Q-3381
aside: Hope the move went well., Budget is approved for next year., The demo went really well.,
  They also asked about our SLA., No rush on this one., Their current vendor contract ends soon.,
  Might be a good fit for the enterprise plan., I promised we would reply this week.
amount: €1,240.00, $980.50, £310.00, CHF 2,400, $12,000
"""


def _parse_pools(spec: str) -> dict[str, tuple[str, ...]]:
    """Reads the pool sheet; entries end at a comma and a space, so "€1,240.00" stays whole."""
    lines: dict[str, str] = {}
    key = ""
    for line in spec.strip().split("\n"):
        if line.startswith("  "):
            lines[key] += " " + line.strip()
        else:
            key, _, rest = line.partition(": ")
            lines[key] = rest
    return {k: tuple(re.split(r",\s+", v.strip())) for k, v in lines.items()}


POOLS: dict[str, tuple[str, ...]] = _parse_pools(_POOL_SPEC)  # "key" and "key/eval" entries
# The country domain that a legal form suggests (other companies get a generic one).
_TLD = {form: tld for form, _, tld in (entry.partition("=") for entry in POOLS["tld_by_form"])}


@dataclass(frozen=True)
class Template:
    """One message style; eval_only styles never appear in training, to measure generalisation."""

    name: str
    eval_only: bool
    variants: tuple[str, ...]


# "= name [eval-only]" starts a style, "- " a variant, two spaces continue it; "\n" is a line break.
_STYLES = r"""
= signature
- {Hi|Hello|Hi all|Morning}, {thanks for your time today|following up on our call|see the attached quote}
   [ (ref {order})].[ {aside}]\n\n{Best|Regards|Thanks|Cheers|Kind regards},\n{name}[\n{title}]
  <<\n^ | ||{company}||{city}>><<\n^\n||{Tel: |M |}{phone}||{email}>>
- {Sorry for the slow reply|Attached is the signed NDA|Happy to hop on a call next week}.\n\n--\n
  <<!^\n||{name}||{company}>>[\n{title}]<<\n^ · ||{M|Mob.|T:} {phone}||{email}||{city}>>[\n{url}]
= casual_chat
- hey, {met|just met|bumped into|had coffee with} {name}[ from {company}] {at the conf|at {event}|yesterday}
  [ - {they're|she's|he's} based in {city}].<< ^, ^.||email is {email}||{cell|number} is {phone}>>
   {worth a follow-up|lmk if you want an intro|}
- ok so {name}<< (^, ^)||{company}||{city}>> {wants|would love|asked for} a demo{| next week| before {date}}.
  [ {aside}]<< {Reach|Contact|Call} {them|her|him} ^ or ^.||at {email}||on {phone}>>
- btw {name}'s new number is {phone}[ and email {email}][ (moved to {city})][ - still at {company}]
= formal_letter
- Dear {{other}|Sir or Madam|colleagues},\n\nI would like to introduce {name}[, {title}][ at {company}]
  [, based in {city}].<< {He|She|They} can be reached ^ or ^.||by e-mail at {email}||by telephone on {phone}>>
  \n\nYours {sincerely|faithfully},\n{me}
- To whom it may concern,\n\nCorrespondence regarding {topic} should be addressed to
   <<!^, ||{name}||{company}||{city}>>.<< ^ ^||Telephone: {phone}.||E-mail: {email}.>>\n\nRegards,\n{me}
= crm_line
- <<!~^ | ||{Lead|Contact|Prospect}: {name}||co: {company}||tel {phone}||{email}||loc: {city}>>
  [ | next: call {date}][ | owner: {other}]
- CRM {order} - <<!^ / ||{name}||{company}||{phone}||{email}||{city}>>[ - stage: {qualified|demo booked}]
= referral
- {other} asked me to pass this along: {name}<< (^, ^)||{company}||{city}>> {would like|wants}
   {a quote|a call back|to talk about {topic}}.<< {Reach|Contact|Call} {them|her|him} ^ or ^.||at {email}
  ||on {phone}>>[ {aside}]
- Passing this on from {other}: {someone|a contact}<< at ^||{company}>>[ in {city}] wants info on {topic}.
  << Details: ^, ^.||{name}||{email}||{phone}>>
= voicemail
- Voicemail ({dur}): Hi, {this is|it's} {name}[ calling from {company}][ in {city}], regarding {topic}.
  << {Please call me back|You can reach me} ^ or ^.||{at|on} {phone}||by email at {email}>> Thanks, bye.
- Voicemail transcript, {date}: hey it's {name}<<, ^ ^||from {company}||in {city}>>... call me {back |}at
   {phone}[, or email {email}]. thanks
- New voicemail ({dur}): Hello, this message is for {other}. <<!^, ^.||My name is {name}||I'm with {company}
  ||I'm calling from {city}>><< ^ ^||My number is {phone}.||Email: {email}.>>
= web_form
- <<!^\n||{Name|Full name|Your name}: {name}||{Email|E-mail}: {email}||{Phone|Tel}: {phone}
  ||{Company|Org}: {company}||{City|Location}: {city}>>\nMessage: {I'd like more info about {topic}.
  |Interested in a quote.|{aside}}
- New form submission{| from {url}}\n<<!~^\n||full name: {name}||email address: {email}
  ||phone number: {phone}||organisation: {company}||city: {city}>>[\nsubmitted: {date}]
= key_value
- <<!~^{; |, | }||{name|contact|full_name}={name}||{email|mail}={email}||{phone|tel}={phone}
  ||{company|org}={company}||{city|loc}={city}>>
- [id={order} ]<<!~^ ||{name|n}:{name}||mail:{email}||tel:{phone}||org:{company}||loc:{city}>>
= meeting_notes
- Meeting notes {date}[, {time}]\n- {spoke with|met} {name}[ ({company})]\n[- based in {city}\n]- {topic}
  <<\n- follow up: ^ / ||{email}||{phone}>>
- Notes from {event}: {name}<< - ^, ^||{title} at {company}||from {city}>>. Wants to discuss {topic}.
  [ {aside}]<< ^ ^||Email {email}.||Phone {phone}.>>
- {date} sync - attendees: {me}, {name}<< (^^)||{company}>>. Action: send the {topic} deck
  << to ^||{email}>>.<< Phone: ^^.||{phone}>>[ {They're|She's|He's} in {city}.]
= business_card
- {Scanned card:|From a business card:|Card:}\n{name}\n{title}<<\n^\n||{company}||{city}>>
  <<\n^\n||{T|Tel|Mob}: {phone}||{E|Email}: {email}>>[\n{url}]
- <<!^\n||{company}||{name}>>[\n{title}]<<\n^ | ||{phone}||{email}>>[\n{city}]
= linkedin_intro
- Hi! I'm {name}, {title}[ at {company}][ based in {city}]. {Would love to connect|Saw your post about
   {topic}}.<< Reach me at ^ or ^.||{email}||{phone}>>
- {Hello|Hi there} {other}, {name} here<< - ^ ^||{title} at {company}||in {city}>>. Happy to share notes
   on {topic}.<< ^ | ||{email}||{phone}>>
= support_ticket
- Ticket {order} - Priority: {low|medium|high}\nRequester: {name}<<\n^\n||Company: {company}
  ||Callback: {phone}||Email: {email}||Site: {city}>>\nIssue: {can't log in|invoice is wrong
  |export fails since {date}}
- Support request from {email}[ ({company})]: {can't reset password|app crashes on start}.
  << ^ ^||Customer name: {name}.||Best number: {phone}.||Location: {city}.>>
= event_signup
- New registration for {event}: <<!^, ||{name}||{company}||{city}>>.
  << Contact: ^, ^.||{email}||{phone}>>[ Ticket: {order}.]
- RSVP {name}[ ({company})] - {attending|+1|attending with {other}}<<\n^ | ||{email}||{phone}||{city}>>
= sms
- hi this is {name}[ from {company}], new number: {phone}[ - save it!][ email still {email}][ ({city})]
- {Hey|Hi}! {first} here ({name}), {moved to {city} so |}text me at {phone}[ or mail {email}]
= calendar_invite
- Invite: Intro call with {name}[ ({company})]\nWhen: {date}, {time}\n{Where|Location}:
   {Zoom|Google Meet|their office in {city}}<<\nGuests: ^, ^||{email}||{me}>>
  <<\nNote: ^||call {first} on {phone} if late>>
= email_forward
- ---------- Forwarded message ---------\nFrom: {name} <{email}>\nDate: {date}\nSubject:
   {Re: {topic}|Intro}\n\nHi {me},<< ^ ^||We're at {company}.||I'm based in {city}.
  ||My direct line is {phone}.>>[ {aside}]
- From: {email}\nSubject: {Quick question|Re: {topic}}\n\n{Hello|Hi},<< ^ ^||this is {name}.
  ||I work at {company}.||Call me on {phone}.||I'm in {city}.>>
= sticky_note
- {Call back|Return call|Missed call} - <<!^, ||{name}||{company}||{phone}||{email}||{city}>>
  [ re: {topic}][ ({time})]
- pls call {name} back asap<< ^||{phone}>>[ - {company}][, {city}][ / {email}]
= csv_row
- name,email,phone,company,city\n[{name}],[{email}],[{phone}],[{company}],[{city}]
- Name;Company;City;Phone;E-mail\n[{name}];[{company}];[{city}];[{phone}];[{email}]
= badge_scan
- Badge scan @ {event} ({date}): <<!^ / ||{name}||{company}||{city}>><<\n^ / ||{email}||{phone}>>
= recruiter
- Candidate: {name}[, currently {title} at {company}][, lives in {city}].
  << ^ ^||Email {email}.||Mobile {phone}.>>[ Available from {date}.]
- Referral for the {title} role: {name}<< (^^)||{company}>>[, open to relocating from {city}]
  <<. ^ | ||{email}||{phone}>>
= intro_email
- {Hi|Hey} {other}, {let me introduce you to|meet|connecting you with} {name}<<, ^ ^||{title} at {company}
  ||in {city}>>. You two should talk about {topic}.<< {They're|She's|He's} at ^ and ^.||{email}||{phone}>>
  [ {aside}]
= bullet_list
- {Contact|New contact|Details}:\n<<!^\n||- {name}||- {company}||- {city}||- {phone}||- {email}>>
- {Contact|Details}:\n<<!~^\n||* {Name|Who}: {name}||* {Company|Works at}: {company}||* City: {city}
  ||* {Phone|Number}: {phone}||* {Email|Mail}: {email}>>
= directory_entry
- {company}[ ({city})]\nContact person: {name}<<\n^\n||Tel. {phone}||E-mail: {email}>>
- <<!^ - ||{company}||{city}>> :: <<^, ||{name}||{phone}||{email}>>
= press_contact
- {For press inquiries|Media contact|Press contact}: <<!^, ^.||{name}||{company}||{phone}||{email}>>
  [ Based in {city}.]
= sales_handoff
- Handing {company} over to you, {other}. Main contact is {name}<< (^^)||{email}>>[, {title}].
  << Direct line: ^^.||{phone}>>[ HQ is in {city}.][ {aside}]
- {other}, can you take over this lead? <<!^, ^.||{name}||{company}||{city}>>
  << Reach them at ^ / ^.||{email}||{phone}>>
= yaml_dump eval-only
- contact:\n<<!^\n||  name: {name}||  email: {email}||  phone: {phone}||  company: {company}
  ||  city: {city}>>[\n  source: {event}]
= invoice_header eval-only
- INVOICE {order}\nDate: {date}\nBill to:\n<<!^\n||{name}||{company}||{city}>>
  <<\n^\n||Tel: {phone}||{email}>>\nAmount due: {amount}
= press_quote eval-only
- "{This is a big step for us|We are excited about {topic}|Our customers asked for this}," said {name},
   {title}[ at {company}][, speaking from {city}].
  << For more, contact ^ or ^.||{email}||{phone}>>
= out_of_office eval-only
- {Auto-reply|Out of office}: I'm away until {date}. For urgent matters please contact {name}
  << (^^)||{company}>><< ^ or ^||at {email}||on {phone}>>.[ {name} works from our {city} office.]
= slack_message eval-only
- @{other} can you {follow up with|reach out to} {name}[ ({company})]? {They|She|He} left
  <<! ^ and ||a number {phone}||email {email}>>[ - based in {city}].[ {aside}]
= chat_log eval-only
- {me}: does anyone have a contact at {company}?\n{other}: yes - {name}<< ^, ||{email}||{phone}>>
  [\n{other}: they sit in {city} btw]
- {me}: got a number for {name}?\n{other}: {phone}[, or mail {email}][ - {company}, {city} office]
= classified_ad eval-only
- For sale: {road bike|sofa|standing desk}, {amount}. {Contact:|Details:}
   <<!^, ^.||{name}||{phone}||{email}>>[ Pickup in {city}.]
= complaint_letter eval-only
- I am writing to complain about order {order}, placed on {date}. My name is {name}
  << and I ^||work for {company}>>[, in {city}].<< ^ ^||Please reply to {email}.
  ||You can call me on {phone}.>>
= phone_message eval-only
- While you were out - {other} took this: {name}[ of {company}] called{| at {time}}.
  << ^||Please call back on {phone}.>>[ Email: {email}.][ Calling from {city}.][ {aside}]
= delivery_note eval-only
- Ship to: <<!^, ||{name}||{company}||{city}>>\nOrder {order}, placed {date}
  <<\nContact phone: ^||{phone}>>[\nNotify: {email}]
"""


def _parse_styles(spec: str) -> tuple[Template, ...]:
    """Reads the style sheet above: written as text so that wording, not Python syntax, fills the lines."""
    styles: list[tuple[str, bool, list[str]]] = []
    for line in spec.strip("\n").split("\n"):
        if line.startswith("= "):
            name, *flag = line[2:].split()
            styles.append((name, flag == ["eval-only"], []))
        elif line.startswith("- "):
            styles[-1][2].append(line[2:])
        else:
            styles[-1][2][-1] += line[2:]
    return tuple(Template(n, e, tuple(v.replace("\\n", "\n") for v in vs)) for n, e, vs in styles)


TEMPLATES = _parse_styles(_STYLES)
_SHARED_STYLES = tuple(t for t in TEMPLATES if not t.eval_only)
_EVAL_STYLES = tuple(t for t in TEMPLATES if t.eval_only)
EVAL_ONLY_TEMPLATES: frozenset[str] = frozenset(t.name for t in _EVAL_STYLES)
EVAL_ONLY_POOLS: dict[str, tuple[str, ...]] = {  # pool entries that train never sees
    k: POOLS[f"{k}/eval"] for k in ("first", "last", "company", "city", "phone")
}

_MARK = re.compile("\x01(\\w+)\x02")
_REF = re.compile(r"\{(\w+)\}")
_GROUP = re.compile(r"<<(.*?)>>", re.S)
_OPTIONAL = re.compile(r"\[([^\[\]]*)\]")
_ANY_CITY, _ANY_COMPANY = (
    re.compile(r"\b(?:" + "|".join(map(re.escape, POOLS[pool] + POOLS[f"{pool}/eval"])) + r")\b")
    for pool in ("city", "company")
)
_FOLD = str.maketrans({"ł": "l", "Ł": "L", "ø": "o", "Ø": "O", "æ": "ae", "ß": "ss", "đ": "d", "ı": "i"})


class _Fail(Exception):
    """This style cannot express this contact (a required detail is not given): try another."""


class _Renderer:
    """Expands one template variant; details become markers so that what was really shown can be read back."""

    def __init__(self, rng: random.Random, values: dict[str, str | None], extras: dict[str, str]) -> None:
        self.rng, self.values, self.extras = rng, values, extras

    def given(self, text: str) -> bool:
        return all(self.values[k] is not None for k in _REF.findall(text) if k in _TRACKED)

    def expand(self, text: str) -> str:
        out: list[str] = []
        i = 0
        while i < len(text):
            if text[i] != "{":
                out.append(text[i])
                i += 1
                continue
            depth, j, cuts = 1, i + 1, [i]
            while depth:
                depth += {"{": 1, "}": -1}.get(text[j], 0)
                if text[j] == "|" and depth == 1:
                    cuts.append(j)
                j += 1
            cuts.append(j - 1)
            out.append(self._pick([text[a + 1 : b] for a, b in itertools.pairwise(cuts)]))
            i = j
        return "".join(out)

    def _pick(self, options: list[str]) -> str:
        if len(options) == 1 and re.fullmatch(r"\w+", options[0]):
            key = options[0]
            if key not in _TRACKED:
                return self.extras[key]
            if self.values[key] is None:
                raise _Fail
            return f"\x01{key}\x02"
        usable = [o for o in options if self.given(o)]
        if not usable:
            raise _Fail
        return self.expand(self.rng.choice(usable))

    def group(self, match: re.Match[str]) -> str:
        head, *segments = match.group(1).split("||")
        flags = head[: len(head) - len(head.lstrip("!~"))]
        parts = head[len(flags) :].split("^")
        pre, sep, post = ("", parts[0], "") if len(parts) == 1 else (parts[0], parts[1], "^".join(parts[2:]))
        shown: list[str] = []
        for segment in segments:
            if self.given(segment):
                with contextlib.suppress(_Fail):
                    shown.append(self.expand(segment))
        if "~" in flags:
            self.rng.shuffle(shown)
        if not shown:
            if "!" in flags:
                raise _Fail
            return ""
        return self.expand(pre) + self.expand(sep).join(shown) + self.expand(post)

    def optional(self, match: re.Match[str]) -> str:
        inner = match.group(1)
        names_detail = any(k in _TRACKED for k in _REF.findall(inner))
        if not (self.given(inner) if names_detail else self.rng.random() < 0.5):
            return ""
        try:
            return self.expand(inner)
        except _Fail:
            return ""

    def render(self, variant: str) -> str:
        text = _OPTIONAL.sub(self.optional, _GROUP.sub(self.group, variant))
        return self.expand(text)


def _tidy(text: str) -> str:
    """Repairs the spacing that dropped optional parts leave behind (markers keep the values untouched)."""
    text = "\n".join(re.sub(r"(?<=\S) {2,}", " ", line).rstrip() for line in text.split("\n"))
    text = re.sub(r" +([,.])", r"\1", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def _slug(text: str) -> str:
    folded = unicodedata.normalize("NFKD", text.translate(_FOLD)).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]", "", folded.lower())


def _draw(rng: random.Random, pool: str, split: Split) -> str:
    """Eval draws from the pool's eval-only entries part of the time; train never sees them."""
    held_out = split == "eval" and rng.random() < EVAL_ONLY_SHARE
    return rng.choice(POOLS[f"{pool}/eval"] if held_out else POOLS[pool])


def _email(rng: random.Random, first: str, last: str, domain: str, split: Split) -> str:
    f, ln = _slug(first), _slug(last)
    pieces = {"f": f, "l": ln, "i": f[0], "j": ln[0]}
    pattern = _draw(rng, "local", split)
    local = "".join(pieces.get(c) or (str(rng.randrange(10)) if c == "#" else c) for c in pattern)
    if rng.random() < 0.05:
        local = ".".join(part.capitalize() for part in local.split("."))
    if rng.random() < 0.1 and "." in domain:
        domain = rng.choice(("eu.", "mail.", "uk.", "corp.")) + domain
    return f"{local}@{domain}"


def _phone(rng: random.Random, pattern: str) -> str:
    if rng.random() < 0.1:
        pattern += " " + rng.choice(POOLS["extension"])
    digit = {"#": lambda: str(rng.randrange(10)), "N": lambda: str(rng.randint(2, 9))}
    return "".join(digit[c]() if c in digit else c for c in pattern)


_EXTRA_POOLS = ("title", "event", "topic", "date", "time", "order", "amount", "aside")


def _contact(rng: random.Random, split: Split) -> tuple[dict[str, str], dict[str, str]]:
    """Samples every detail (the presence mask is applied later) plus the distractor extras."""
    first, last = _draw(rng, "first", split), _draw(rng, "last", split)
    style, second = rng.random(), _draw(rng, "last", split)
    if style < 0.05:
        name = f"{first} {rng.choice('ABCDEJKLMRST')}. {last}"
    elif style < 0.09 and " " not in last + second and second != last:
        name = f"{first} {last}-{second}"
    else:
        name = f"{first} {last}"
    base = _draw(rng, "company", split)
    suffix = _draw(rng, "suffix", split) if rng.random() < 0.45 else ""
    suffix = "" if "&" in base and "&" in suffix else suffix  # no "Quill & Ink & Co"
    words = [w for w in map(_slug, base.split()) if w]
    stem = rng.choice(("".join(words), words[0], "-".join(words)))
    domain = stem + (_TLD.get(suffix) or rng.choice(POOLS["tld"]))
    mail_domain = domain if rng.random() < 0.65 else _draw(rng, "freemail", split)
    values = {
        "name": name,
        "email": _email(rng, first, last, mail_domain, split),
        "phone": _phone(rng, _draw(rng, "phone", split)),
        "company": f"{base} {suffix}" if suffix else base,
        "city": _draw(rng, "city", split),
        "first": first,
    }
    me, other = rng.sample([n for n in POOLS["first"] if n != first], 2)
    url = rng.choice(("www.", "https://", "https://www.")) + domain + rng.choice(("", "/contact", "/about"))
    extras = {
        **{k: rng.choice(POOLS[k]) for k in _EXTRA_POOLS},
        "me": me, "other": other, "url": url, "dur": f"0:{rng.randint(8, 59):02d}",
    }  # fmt: skip
    return values, extras


def _leaks(user: str, values: dict[str, str], shown: set[str]) -> bool:
    """True when a detail labelled null still shows up (e.g. a city inside a company name): resample."""
    if any(values[k] in user for k in KEYS if k not in shown):
        return True
    return ("city" not in shown and bool(_ANY_CITY.search(user))) or (
        "company" not in shown and bool(_ANY_COMPANY.search(user))
    )


def _example(rng: random.Random, split: Split) -> tuple[dict[str, Any], Template] | None:
    """One record and its style, or None when this draw cannot make a clean example (the caller redraws).

    A contact keeps its details while up to five styles are tried, so that sparse contacts (one detail, no
    name) are not lost to the styles that need a name: their share stays close to what PRESENCE asks for.
    """
    values, extras = _contact(rng, split)
    keep = {k: rng.random() < PRESENCE[k] for k in KEYS}
    if rng.random() < 0.05:
        only = rng.choice(KEYS)
        keep = {k: k == only for k in KEYS}
    masked: dict[str, str | None] = {k: values[k] if keep.get(k, keep["name"]) else None for k in values}
    for _ in range(5):
        use_eval_only = split == "eval" and rng.random() < EVAL_ONLY_SHARE
        template = rng.choice(_EVAL_STYLES if use_eval_only else _SHARED_STYLES)
        record = _record(rng, template, values, masked, extras)
        if record is not None:
            return record, template
    return None


def _record(
    rng: random.Random,
    template: Template,
    values: dict[str, str],
    masked: dict[str, str | None],
    extras: dict[str, str],
) -> dict[str, Any] | None:
    """Renders the contact in one of the style's variants; None when no variant gives a clean example."""
    for variant in rng.sample(template.variants, len(template.variants)):
        try:
            marked = _tidy(_Renderer(rng, masked, extras).render(variant))
        except _Fail:
            continue
        shown = set(_MARK.findall(marked))
        if "\x01company\x02." in marked and values["company"] not in POOLS["company"] + POOLS["company/eval"]:
            return None  # "Acme Inc." ending a sentence could be "Acme Inc" or "Acme Inc.": ambiguous label
        user = _MARK.sub(lambda m: values[m.group(1)], marked)
        if not shown & set(KEYS) or ("first" in shown and "name" not in shown) or len(user) > MAX_USER_CHARS:
            return None
        if _leaks(user, values, shown):
            return None
        reference = {k: values[k] if k in shown else None for k in KEYS}
        assert all(v in user for v in reference.values() if v is not None), (user, reference)
        messages = [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": user},
            {"role": "assistant", "content": json.dumps(reference, ensure_ascii=False)},
        ]
        return {"messages": messages}
    return None


def generate(
    n: int, split: Split, seed: int | None = None, *, exclude: Collection[str] = (), with_meta: bool = False
) -> list[dict[str, Any]]:
    """``n`` distinct examples for ``split``, reproducible from ``seed`` (default: the split's shipped seed).

    ``exclude`` holds user messages that must not be produced (the other split's). With ``with_meta`` each
    record also carries ``meta`` = {"template", "eval_only"} so tests can see which style made it.
    """
    if split not in DEFAULT_SEEDS:
        raise ValueError(f"split must be 'train' or 'eval', not {split!r}")
    rng = random.Random(DEFAULT_SEEDS[split] if seed is None else seed)
    seen = set(exclude)
    records: list[dict[str, Any]] = []
    while len(records) < n:
        for _ in range(1000):
            made = _example(rng, split)
            if made is not None and made[0]["messages"][1]["content"] not in seen:
                break
        else:
            raise RuntimeError("contacts generator: 1000 draws in a row failed (a broken template?)")
        record, template = made
        seen.add(record["messages"][1]["content"])
        if with_meta:
            record["meta"] = {"template": template.name, "eval_only": template.eval_only}
        records.append(record)
    return records


def reference_of(record: dict[str, Any]) -> dict[str, str | None]:
    """The expected details of a record, parsed from its assistant reply (ValueError if it is not one)."""
    messages = record.get("messages") if isinstance(record, dict) else None
    if not isinstance(messages, list) or not messages or not isinstance(messages[-1], dict):
        raise ValueError("record has no messages")
    if messages[-1].get("role") != "assistant" or not isinstance(messages[-1].get("content"), str):
        raise ValueError("the last message is not an assistant reply")
    try:
        reply = json.loads(messages[-1]["content"])
    except json.JSONDecodeError as exc:
        raise ValueError(f"the assistant reply is not JSON ({exc.msg})") from None
    if not isinstance(reply, dict) or set(reply) != set(KEYS):
        raise ValueError(f"the assistant reply must be a JSON object with exactly the keys {', '.join(KEYS)}")
    if not all(v is None or isinstance(v, str) for v in reply.values()):
        raise ValueError("every value in the assistant reply must be a string or null")
    return {k: reply[k] for k in KEYS}


def builtin_path(split: Split) -> Path:
    """Where the shipped file of ``split`` lives inside the package."""
    if split not in DEFAULT_SEEDS:
        raise ValueError(f"split must be 'train' or 'eval', not {split!r}")
    return Path(__file__).parent / "builtin" / f"contacts_{split}.jsonl"


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Reads a contacts JSONL file, checking each line so that a bad file is reported by name and line."""
    records: list[dict[str, Any]] = []
    try:
        lines = Path(path).read_text(encoding="utf-8").split("\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(str(path), f"cannot read the file ({exc})") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(str(path), f"not valid JSON ({exc.msg})", number) from None
        roles = [m.get("role") for m in record.get("messages", [])] if isinstance(record, dict) else None
        if roles != ["system", "user", "assistant"]:
            raise DataError(str(path), "expected messages with the roles system, user, assistant", number)
        try:
            reference_of(record)
        except ValueError as exc:
            raise DataError(str(path), str(exc), number) from None
        records.append(record)
    if not records:
        raise DataError(str(path), "the file holds no examples")
    return records


def load(split: Split) -> list[dict[str, Any]]:
    """The shipped examples of ``split``."""
    return read_records(builtin_path(split))


def write_builtin(out_dir: str | Path) -> dict[str, Path]:
    """Generates both splits with the default seeds and sizes and writes them as JSONL (only "messages")."""
    train = generate(DEFAULT_SIZES["train"], "train")
    train_users = {r["messages"][1]["content"] for r in train}
    evals = generate(DEFAULT_SIZES["eval"], "eval", exclude=train_users)
    overlap = train_users.intersection(r["messages"][1]["content"] for r in evals)
    assert not overlap, f"user messages in both splits: {sorted(overlap)[:3]}"
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for split, records in (("train", train), ("eval", evals)):
        paths[split] = out / f"contacts_{split}.jsonl"
        with paths[split].open("w", encoding="utf-8", newline="\n") as handle:
            handle.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lorakit.data.contacts", description="Regenerates the shipped contacts JSONL files."
    )
    parser.add_argument("--out", type=Path, default=builtin_path("train").parent, help="output folder")
    args = parser.parse_args(argv)
    for split, path in write_builtin(args.out).items():
        print(f"wrote {DEFAULT_SIZES[split]} {split} examples to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
