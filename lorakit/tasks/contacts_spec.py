"""The text of the contacts generator: value pools and message styles, in the mini-languages that
``lorakit.tasks.contacts`` documents and parses. Data, not code: edit here to add variety."""

# Value pools, "key: a, b, c" (two spaces continue a line). "key/eval" entries appear in the eval split only.
# Kept disjoint, and no city hides inside a company or name, so that a null label can be checked for leaks.
# Phone patterns: '#' is any digit, 'N' a digit 2-9. Email local parts: f/l first/last, i/j their initials.
POOL_SPEC = """
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


# "= name [eval-only]" starts a style, "- " a variant, two spaces continue it; "\n" is a line break.
STYLE_SPEC = r"""
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
