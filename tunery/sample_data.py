"""Synthetic IT help-desk tickets: the demo data set bundled with tunery.

Every ticket in ``data/samples/helpdesk_tickets.csv`` was made up by this module, written by the tunery
project; none of it comes from a real help desk, a real company or a real person. The generator is
deterministic: the same ``n`` and ``seed`` always give byte-identical output, so the committed CSV can be
checked against the code that produced it (see ``tests/test_sample_data.py``).

Each row has the columns ``ticket_id,subject,body,queue``. The label ``queue`` is one of five routing
queues, mildly imbalanced (about 28/22/20/18/12 %):

* ``access``   - accounts, passwords, MFA, permissions
* ``hardware`` - laptops, monitors, printers, docking stations
* ``network``  - VPN, Wi-Fi, DNS, slow connections
* ``software`` - installing, licensing and crashing applications
* ``billing``  - invoices, refunds, purchase orders, subscriptions

The texts are built from many templates per queue, filled with product names, offices, error codes,
device models and first names, with polite or curt openers and closers, urgency phrases, casual style and
typos. About one clean ticket in ten deliberately uses the vocabulary of another queue (a refund for
unused software licences is still ``billing``), so no single keyword decides the label.

About 6-8 % of the rows are deliberately dirty, for the cleaning step to find:

* ``html``      - body wrapped in HTML markup (``<p>``, ``<br>``, ``&amp;``)
* ``duplicate`` - exact copy of an earlier ticket's subject, body and queue under a new ticket_id
* ``empty``     - empty subject and empty body
* ``no_queue``  - queue is the empty string
* ``unicode``   - stray whitespace, non-breaking and zero-width spaces, fullwidth characters
* ``long``      - a body over 6,000 characters (a pasted log dump)

Dirty kinds never overlap: each dirty row has exactly one of them. With fewer than 20 rows none are made.

Run ``python -m tunery.sample_data [PATH]`` to (re)write the CSV (default
``data/samples/helpdesk_tickets.csv``).
"""

from __future__ import annotations

import csv
import io
import random
import re
import sys
from pathlib import Path

FIELDS: tuple[str, ...] = ("ticket_id", "subject", "body", "queue")
QUEUES: tuple[str, ...] = ("access", "hardware", "network", "software", "billing")
QUEUE_SHARES: dict[str, float] = {
    "access": 0.28,
    "hardware": 0.22,
    "network": 0.20,
    "software": 0.18,
    "billing": 0.12,
}
# Share of rows of each dirty kind (with n=600: 8 + 9 + 4 + 7 + 9 + 2 = 39 rows, 6.5 %).
DIRTY_SHARES: dict[str, float] = {
    "html": 8 / 600,
    "duplicate": 9 / 600,
    "empty": 4 / 600,
    "no_queue": 7 / 600,
    "unicode": 9 / 600,
    "long": 2 / 600,
}
MIN_ROWS_FOR_DIRTY = 20
LONG_BODY_MIN_CHARS = 6500
DEFAULT_PATH = Path("data/samples/helpdesk_tickets.csv")

# --------------------------------------------------------------------------------------------------------
# Slot fillers
# --------------------------------------------------------------------------------------------------------

# fmt: off
SLOTS: dict[str, tuple[str, ...]] = {
    "name": (
        "Anna", "Ben", "Chloe", "David", "Elif", "Farid", "Grace", "Hiro", "Ines", "Jonas", "Kemi", "Lukas",
        "Maria", "Nikhil", "Olga", "Pedro", "Priya", "Rachel", "Sam", "Tomasz", "Ulla", "Victor", "Wei",
        "Yasmin", "Zoe", "Marco", "Fatima", "Liam", "Sofia", "Kenji", "Aisha", "Mateo", "Hannah", "Oskar",
    ),
    "surname": (
        "Schmidt", "Okafor", "Nguyen", "Garcia", "Kowalski", "Rossi", "Smith", "Tanaka", "Dubois", "Patel",
        "Jensen", "Silva", "Novak", "Murphy", "Larsen", "Haddad", "Fischer", "Brown", "Costa", "Ivanova",
    ),
    "office": (
        "Berlin", "Lyon", "Leeds", "Austin", "Warsaw", "Singapore", "Toronto", "Madrid", "Dublin",
        "Munich", "the Amsterdam office", "building B", "HQ", "the Porto site",
    ),
    "app": (
        "Outlook", "Excel", "Teams", "Slack", "Zoom", "Adobe Acrobat", "Photoshop", "SAP GUI", "Salesforce",
        "Jira", "VS Code", "Tableau", "AutoCAD", "Power BI", "Chrome", "OneDrive", "SharePoint", "Word",
        "PowerPoint", "Docker Desktop", "IntelliJ IDEA", "Notepad++", "MATLAB", "SPSS", "Figma",
    ),
    "system": (
        "Okta", "Active Directory", "the Azure portal", "the HR portal", "Workday", "Confluence", "GitHub",
        "SAP", "Salesforce", "my Windows login", "the intranet", "Jira", "the expenses tool", "Office 365",
    ),
    "share": (
        "\\\\fs01\\finance", "the Marketing SharePoint site", "the Finance shared drive", "the HR folder",
        "the #proj-phoenix Slack channel", "the PROD Jira project", "the Legal Teams channel",
        "\\\\fs02\\engineering\\releases", "the Sales dashboard in Power BI", "the board minutes folder",
    ),
    "group": (
        "Finance-Approvers", "VPN-Users", "Developers", "HR-Readonly", "Sales-EMEA", "Confluence-Admins",
        "Local-Admins", "Procurement", "Data-Analysts",
    ),
    "laptop": (
        "Dell Latitude 5440", "Dell XPS 13", "Lenovo ThinkPad T14", "ThinkPad X1 Carbon", "HP EliteBook 840",
        "MacBook Pro 14", "MacBook Air", "Surface Laptop 5", "Dell Precision 5570", "HP ZBook",
    ),
    "monitor": (
        "Dell U2723QE", "LG 27UK850", "Samsung ultrawide", "HP E24 G5", "Dell P2422H", "BenQ monitor",
    ),
    "printer": (
        "HP LaserJet M507", "Canon imageRUNNER", "Brother HL-L2350", "Xerox VersaLink C405", "Ricoh IM C3000",
        "big colour printer", "printer by the kitchen",
    ),
    "dock": (
        "Dell WD19 dock", "ThinkPad USB-C Dock", "CalDigit TS4", "HP Thunderbolt Dock G4", "docking station",
    ),
    "peripheral": (
        "Jabra Evolve2 65 headset", "wireless mouse", "Logitech C920 webcam", "keyboard with UK layout",
        "USB-C to HDMI adapter", "laptop stand", "second monitor", "ergonomic mouse",
    ),
    "vpn": ("GlobalProtect", "Cisco AnyConnect", "FortiClient", "the VPN client", "OpenVPN"),
    "ssid": ("CORP-WIFI", "Guest-WLAN", "ACME-Secure", "eduroam", "CORP-5G"),
    "site": (
        "intranet.acme.local", "jira.internal", "the wiki", "sharepoint", "git.acme.local",
        "the timesheet site", "reports.acme.local", "the CRM",
    ),
    "vendor": (
        "Microsoft", "Adobe", "Zoom", "Slack", "Atlassian", "Dell", "CDW", "Lenovo", "AWS", "Salesforce",
        "DocuSign", "Miro", "Canva", "Vodafone", "Telekom",
    ),
    "since": (
        "since this morning", "since yesterday", "since the update on Monday", "for about a week",
        "since the reboot", "since I came back from holiday", "on and off for 2 days", "since lunch",
        "since last Thursday", "since the office move",
    ),
    "err_access": (
        "AADSTS50076", "AADSTS50126", "AADSTS700082", "error 0x80090016", "403 Forbidden", "ACCOUNT_LOCKED",
        "error 1326", "'The user name or password is incorrect'", "'Your account has been disabled'",
    ),
    "err_net": (
        "error 809", "error 720", "DNS_PROBE_FINISHED_NXDOMAIN", "ERR_CONNECTION_TIMED_OUT",
        "ERR_NAME_NOT_RESOLVED", "'Gateway unreachable'", "'The remote connection was denied'",
        "error 691", "'Request timed out'",
    ),
    "err_sw": (
        "0xc0000005", "0x80070643", "error 1603", "0xc000007b", "'MSVCP140.dll was not found'",
        "'An unexpected error occurred'", "'License checkout failed (-8)'", "error 0x8004010F",
        "'Application has stopped working'",
    ),
    "err_hw": (
        "'No bootable device'", "'Battery not detected'", "'CPU fan error'", "error 2000-0142",
        "three beeps", "'Fan failure detected'",
    ),
    "addin": ("Zoom", "Salesforce", "DocuSign", "Grammarly", "Teams meeting", "Power Pivot", "Adobe PDF"),
    "project": ("Phoenix", "Atlas", "Q3 forecast", "website relaunch", "Hermes", "ERP migration", "audit"),
    "month": (
        "January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
        "November", "December",
    ),
    "day": ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "the 1st", "the 15th"),
    "time": ("9am", "10:30", "about 11", "2pm", "half past three", "8:45", "noon"),
    "urgency": (
        "This is urgent, I have a client demo at 3pm.", "Not urgent but quite annoying.",
        "It's blocking my work completely.", "The whole team is affected!",
        "Deadline is tomorrow, please help.",
        "Whenever you get a chance.", "Could someone look at this today please?", "asap please!!",
        "No rush.", "I have a board meeting in an hour...", "This is the third time I'm reporting this.",
    ),
    "opener": (
        "Hi,", "Hello IT,", "Hi team,", "Good morning,", "Hey,", "Dear Support,", "Hi there,", "Hello,",
        "Hi all,", "Morning,", "Hi helpdesk,", "Good afternoon,",
    ),
    "closer": (
        "Thanks", "Thank you!", "Thanks in advance", "Cheers", "Regards", "thx", "Best regards",
        "Many thanks",
        "Thanks a lot", "Kind regards", "Appreciate the help",
    ),
}

# --------------------------------------------------------------------------------------------------------
# Templates. A core template is (subjects, body): "|" separates the subject lines that fit the body.
# --------------------------------------------------------------------------------------------------------

Template = tuple[str, str]
CrossTemplate = tuple[str, str, str]  # (queue whose vocabulary it borrows, subjects, body)

GENERIC_SUBJECTS: tuple[str, ...] = (
    "Help", "Issue", "urgent", "Question", "not working", "quick question", "Request", "Problem",
    "(no subject)", "help needed pls", "Ticket", "FW: issue", "Support request", "can someone help?",
    "Issue {since}", "still broken",
)

BODIES: dict[str, tuple[Template, ...]] = {
    "access": (
        ("Account locked out|locked out|Please unlock my account",
         "I've been locked out of my account after too many attempts. Can you unlock it please?"),
        ("password expired|{system} won't accept new password|Password problem",
         "My password expired and now {system} won't accept the new one."),
        ("{system} says my password is wrong|Login problem after password change",
         "I changed my password this morning and now {system} keeps saying the credentials are wrong."),
        ("New phone - need to move Authenticator|MFA after phone change|Authenticator app reset",
         "I got a new phone and the Authenticator app no longer has my account, so I can't approve "
         "the MFA prompt."),
        ("MFA not working|MFA push not arriving|No MFA notification",
         "The MFA push never arrives on my phone. I've tried about 5 times {since}."),
        ("{err_access} when signing in|Cannot log in to {system}|login problem",
         "I'm getting {err_access} when I try to sign in to {system}."),
        ("Access request: {share}|Read access to {share}|Need access",
         "Could you please give me read access to {share}? My manager {name2} approved it."),
        ("Need permissions for {share}|Write access request",
         "I need write permission on {share} for the quarter-end work. {name2} can confirm."),
        ("Onboarding: account for {name2}|New starter on {day}|New user account",
         "We have a new starter, {name2}, beginning on {day}. Please create an account and add them to the "
         "same groups as me."),
        ("Offboarding - disable account for {name2}|Leaver: {name2}",
         "{name2} left the company last Friday, please disable their account and remove access to {share}."),
        ("Admin rights request|Local admin for a few days",
         "I don't have the rights to install anything, could I get local admin on my machine for a "
         "few days?"),
        ("Can't access {share}|Access denied on {share}",
         "When I open {share} I get 'Access denied'. Last week it worked fine."),
        ("2FA codes not arriving|No SMS codes",
         "SMS codes for two-factor are not arriving. My number hasn't changed."),
        ("Password reset needed|Self-service reset not working",
         "The self-service password reset page says my security answers are wrong, but I'm sure "
         "they're right."),
        ("Account disabled?|{system} account disabled",
         "My username shows as disabled in {system}. I'm still employed here as far as I know :)"),
        ("Sign-in loop on {system}|Keeps asking me to log in",
         "I'm stuck in a loop of being asked to sign in again on {system}."),
        ("Please add me to {group}|Group membership request",
         "Can you add me to the {group} group? I need it for my new role."),
        ("Password reset needed|forgot password",
         "Forgot my password after the long weekend, can someone reset it?"),
        ("Permission problem on {share}|Files won't open - permission denied",
         "I can see the folder {share} but every file says I don't have permission to open it."),
        ("locked out again|Account locked",
         "My account got locked {since} and I can't even get to my email."),
    ),
    "hardware": (
        ("Laptop won't turn on|{laptop} dead|{laptop} not booting",
         "My {laptop} won't power on at all, no lights when I plug in the charger."),
        ("{laptop} battery draining fast|Battery issue",
         "The battery on my {laptop} goes from 100% to 20% in about an hour."),
        ("Second monitor not detected|{monitor} not detected|No display through dock",
         "My {monitor} is not detected when I connect through the {dock}."),
        ("Printer jammed on floor {floor}|Paper jam|{printer} jamming",
         "The {printer} on floor {floor} keeps jamming on every second page."),
        ("{printer} offline|Printer offline in {office}",
         "The {printer} shows as offline for everyone in {office}. We tried turning it off and on."),
        ("Print quality problem|Stripes on printouts",
         "The printer is printing everything with a grey stripe down the middle."),
        ("Docking station not working|{dock} not charging",
         "The {dock} doesn't charge my laptop anymore and the USB ports on it are dead."),
        ("Keyboard keys not working|coffee + keyboard :(",
         "I spilled coffee on my keyboard and now a few keys don't work (e, r and the spacebar)."),
        ("Broken screen|Cracked laptop screen",
         "My laptop screen has a crack in the corner after it fell off the desk."),
        ("Laptop very hot and loud|Fan noise",
         "The fan on my {laptop} is running at full speed all the time and the bottom gets really hot."),
        ("Request for {peripheral}|Replacement {peripheral}",
         "Could I get a {peripheral}? Mine stopped working."),
        ("{monitor} flickering|Screen flicker",
         "The screen on my {monitor} flickers every few seconds, the cable looks OK."),
        ("Webcam not detected|Camera not working",
         "The webcam is not detected, the little light never comes on."),
        ("Replacement charger needed|Lost charger",
         "I lost my charger on a trip to {office}, I need a replacement USB-C charger."),
        ("{laptop} not booting|Boot error",
         "The laptop shows {err_hw} on boot and then shuts down."),
        ("Toner empty|{printer} out of toner",
         "Toner is empty on the {printer} and there are no spare cartridges in the cupboard."),
        ("laptop dropped - cracked hinge|Broken hinge",
         "The hinge on my {laptop} cracked and the screen wobbles when I type."),
        ("No display through dock|Monitors black with {dock}",
         "Both external monitors stay black when I plug in the {dock}, the laptop screen works."),
        ("Trackpad acting up|Cursor jumping around",
         "The trackpad on my {laptop} clicks by itself and moves the cursor randomly."),
    ),
    "network": (
        ("VPN keeps disconnecting|{vpn} dropping",
         "{vpn} disconnects every 10-15 minutes and I have to log in again."),
        ("{vpn} won't connect|VPN error {err_net}|Can't connect to VPN",
         "I can't connect to the VPN from home, it fails with {err_net}."),
        ("Wi-Fi very slow in {office}|network super slow",
         "The Wi-Fi in {office} is extremely slow today, speedtest shows under 2 Mbps."),
        ("Can't connect to {ssid}|No internet on {ssid}",
         "My laptop connects to {ssid} but says 'No internet, secured'."),
        ("DNS issue - internal sites not resolving|{site} not loading",
         "Internal sites like {site} don't resolve, I get {err_net}. Google works fine."),
        ("Slow connection to file server|File copies very slow",
         "Copying files to the file server takes forever, a 50 MB file took 20 minutes."),
        ("Ethernet port dead at desk {desk}|Network socket not working",
         "The network port at my desk doesn't seem to be live, the light on the cable doesn't blink."),
        ("Internet down on floor {floor}|No internet",
         "The whole of floor {floor} lost internet around {time}."),
        ("Packet loss on VPN|VPN very laggy",
         "I get a lot of packet loss when I'm on VPN, pings to {ip2} are all over the place."),
        ("Guest Wi-Fi password|Wi-Fi for visitors",
         "What's the guest Wi-Fi password this week? We have visitors from a client."),
        ("Connection keeps dropping|Calls choppy every afternoon",
         "Video calls are choppy and the connection drops every few minutes, only in the afternoons."),
        ("DNS problem|{site} not resolving",
         "nslookup {site} returns nothing, but it works for my colleague {name2}."),
        ("wifi dropping in meeting room|Wi-Fi in room {room}",
         "The Wi-Fi keeps dropping in meeting room {room}."),
        ("Cannot reach {site}|{site} only works in the office",
         "I can't reach {site} when working from home, but it's fine in the office."),
        ("Everything times out|No connection",
         "Ping to the gateway is ok but everything else times out."),
        ("{vpn} stuck connecting|VPN hangs",
         "{vpn} is stuck on 'Connecting...' forever."),
        ("Slow downloads on {ssid}|Wi-Fi slow",
         "Downloads are really slow on {ssid}, uploads seem fine."),
        ("Internal pages not opening|DNS broken on {ssid}?",
         "After switching to {ssid} I can't open any internal pages, DNS seems broken."),
    ),
    "software": (
        ("{app} crashing|{app} crashes on big files",
         "{app} crashes every time I open a file larger than a few MB."),
        ("Need {app} installed|Install request: {app}|Can I get {app} on my laptop",
         "Could you install {app} on my laptop? I need it for the {project} project."),
        ("{app} licence expired|{app} in read-only mode",
         "{app} says my licence has expired and switches to read-only mode."),
        ("{app} won't start|Update broke {app}",
         "After the update last night {app} won't start, it shows {err_sw}."),
        ("Software Center install fails|Error {err_sw} installing {app}|Install of {app} failed",
         "Installing {app} from Software Center fails with {err_sw}."),
        ("{app} keeps freezing|{app} very slow",
         "{app} freezes for about 30 seconds whenever I switch tabs."),
        ("Add-in missing in {app}|{addin} add-in gone",
         "The {addin} add-in disappeared from {app}."),
        ("Licence for {app}?|{app} licence request",
         "I'd like to request a licence for {app}, my manager {name2} approved."),
        ("{app} very slow|Roll back {app}?",
         "{app} is extremely slow since version {version}, can we roll back?"),
        ("{app} error when saving|Lost my work in {app}",
         "When I try to save in {app} I get {err_sw} and lose my changes."),
        ("Install request: {app}|{app} installer needs admin",
         "The installer for {app} asks for admin credentials, can someone push it remotely?"),
        ("{app2} crashing|{app} and {app2} conflict",
         "{app} and {app2} don't get along - when both are open, {app2} crashes."),
        ("{app} not responding|PDF export hangs",
         "{app} keeps showing 'Not responding' when I export to PDF."),
        ("{app} upgrade request|Need newer {app}",
         "I need {app} upgraded to the latest version, the current one can't open files from our client."),
        ("Spell check broken|{app} spell check",
         "Spell check stopped working in {app}."),
        ("{app} closes by itself|{app} crashing",
         "{app} closes without any message a few seconds after opening."),
        ("Software for new starter|Install {app} + {app2}",
         "Can I get {app} and {app2} installed on the new starter's machine for {name2}?"),
        ("Macro error in {app}|{project} report broken",
         "The {app} macro we use for the {project} report throws {err_sw} since the update."),
    ),
    "billing": (
        ("Invoice {inv} query|Wrong amount on invoice",
         "We received invoice {inv} from {vendor} for {amount} but the agreed price was lower. "
         "Can you check?"),
        ("Duplicate charge on {vendor} subscription|Charged twice",
         "We were charged twice for the {vendor} subscription this month ({amount} each)."),
        ("Purchase order for {n_small} laptops|PO request - new hires",
         "Please raise a purchase order for {n_small} laptops for the new hires in {office}."),
        ("Cancel {vendor} subscription|Subscription cancellation",
         "Could you cancel our {vendor} subscription at the end of the term? We moved to another tool."),
        ("Wrong VAT on invoice|VAT on {inv}",
         "The VAT on invoice {inv} is wrong, it should be reverse charge."),
        ("PO {po} not received by supplier|Resend PO",
         "The supplier says they never received PO {po}, can you resend it?"),
        ("Invoice needs cost centre change|Cost centre on {inv}",
         "Invoice {inv} has the wrong cost centre, please change it to {cc}."),
        ("Renewal quote for {vendor}|{vendor} contract renewal",
         "Can we get a renewal quote for {vendor}? The current contract ends in {month}."),
        ("Credit note missing|{vendor} credit note",
         "{vendor} promised a credit note of {amount} for the outage in {month} but we haven't seen it."),
        ("Payment reminder from {vendor}|Invoice {inv} unpaid?",
         "We got a payment reminder from {vendor} for {inv}, I thought this was paid already."),
        ("Expense reimbursement|Reimbursement for adapter",
         "I paid for an adapter myself ({amount}) on a client visit, how do I get reimbursed?"),
        ("Reduce {vendor} seats|{vendor} seat count",
         "Please reduce our {vendor} subscription from {n_big} to {n_small} seats from next month."),
        ("Unexpected charge|Cost centre charged by mistake",
         "Our department budget was charged {amount} for something we didn't order."),
        ("{vendor} invoices for audit|Copies of invoices",
         "I need copies of last year's invoices from {vendor} for the audit."),
        ("Refund request|Auto-renewal refund",
         "Our annual {vendor} subscription renewed automatically - we wanted to cancel, can we get "
         "a refund?"),
        ("PO approval pending|Who approves POs?",
         "Who approves purchase orders over {amount}? Mine has been pending for two weeks."),
    ),
}

DETAILS: dict[str, tuple[str, ...]] = {
    "access": (
        "I've already tried the self-service reset page.", "My username is {user}.",
        "I'm working from {office} today.", "I cleared the browser cache, didn't help.",
        "The error says: {err_access}.", "Other colleagues can log in fine.", "Manager approval: {name2}.",
        "I can be reached on my mobile in the meantime.",
    ),
    "hardware": (
        "Asset tag is {asset}.", "I've already tried another cable and another power socket.",
        "Serial number from the sticker: {serial}.", "I'm at desk {desk} in {office}.",
        "It's about 3 years old.", "I can bring it to the IT desk whenever suits you.",
        "Restarting didn't change anything.",
    ),
    "network": (
        "My IP is {ip}.", "I'm on {vpn} version {version}.",
        "I tried restarting my router at home, no change.",
        "I'm connected via Wi-Fi, not cable.", "Other people in {office} have the same problem.",
        "Traceroute stops after the 3rd hop.", "Speedtest on my phone is fine.",
    ),
    "software": (
        "Version: {version}.", "I've tried reinstalling, same result.", "Restarting the laptop didn't help.",
        "Screenshot attached.", "The error code is {err_sw}.",
        "It happens on my laptop and on the one in the meeting room.", "Colleagues have the same version.",
    ),
    "billing": (
        "Cost centre: {cc}.", "The PO number is {po}.", "Finance needs this by the end of the month.",
        "Invoice PDF attached.", "Our contact at {vendor} is {name2}.", "Amount in question: {amount}.",
        "Please copy {name2} from finance.",
    ),
}

# Tickets that use vocabulary typical of *another* queue but still belong to this one; half of their
# detail sentences come from that other queue too.
CROSS_BODIES: dict[str, tuple[CrossTemplate, ...]] = {
    "access": (
        ("network", "Password expired|VPN ok but can't log in",
         "The VPN connects fine but {system} rejects my password since it expired yesterday."),
        ("hardware", "New laptop - can't log in|{laptop} login",
         "Got my new {laptop} today but I can't log in with my account, it says the user profile "
         "cannot be loaded."),
        ("billing", "Access to {vendor} billing portal|Invoice portal account",
         "I need a user account on the {vendor} billing portal to download our invoices, can you add me?"),
        ("software", "{app} says account locked|{app} login",
         "{app} keeps asking for my password and then says my account is locked."),
        ("network", "Can't join {ssid}|Wi-Fi login fails",
         "I can't join the Wi-Fi {ssid} because it asks for my domain password and that account is locked."),
        ("hardware", "Badge not working at printer|Printer badge login",
         "The printer wants me to badge in but my badge is no longer linked to my account."),
    ),
    "hardware": (
        ("network", "Wi-Fi adapter missing|Laptop dropped - no Wi-Fi",
         "My laptop won't connect to any Wi-Fi since I dropped it, the wireless adapter doesn't even "
         "show up in device manager."),
        ("network", "Ethernet port on dock dead|{dock} LAN port",
         "Since the {dock} firmware update the ethernet port on the dock is dead, Wi-Fi still works."),
        ("software", "{printer} printing garbage|Printer prints nonsense",
         "The {printer} prints a page of garbage every time I print from {app}, other printers are fine."),
        ("access", "Fingerprint reader broken|Windows Hello not working",
         "The fingerprint reader on my {laptop} stopped working so I can't sign in with Windows Hello."),
        ("billing", "Docks dead on arrival|DOA docking stations",
         "Two of the docking stations from PO {po} arrived dead on arrival, can we get them swapped?"),
        ("software", "Screen goes black in calls|Graphics problem",
         "The screen goes black whenever {app} starts a video call, I think the graphics card is failing."),
    ),
    "network": (
        ("software", "{app} cannot connect to server|VPN problem?",
         "{app} says 'cannot connect to server' but I think it's the VPN, every other site times out too."),
        ("access", "VPN rejects connection after MFA|VPN error {err_net}",
         "My password works but the VPN rejects the connection after the MFA prompt with {err_net}."),
        ("hardware", "Wi-Fi drops after sleep|New laptop Wi-Fi",
         "Since I got the new {laptop} the Wi-Fi drops every time it wakes from sleep."),
        ("billing", "Can't reach {vendor} portal|Website times out on office network",
         "Can't reach the {vendor} billing portal from the office network, it times out - works on my "
         "phone's hotspot."),
        ("software", "{app} licence server unreachable|Licence server timeout",
         "The licence server for {app} is unreachable from {office}, ping times out."),
        ("hardware", "All printers offline on floor {floor}|Switch down?",
         "The printers on floor {floor} are all offline, I think the switch in the comms room is down."),
    ),
    "software": (
        ("hardware", "{app} crashes when printing|Printing from {app}",
         "{app} crashes every time I try to print to the {printer}, printing from other apps works."),
        ("access", "{app} keeps asking me to sign in|{app} login prompts",
         "{app} keeps asking me to sign in again every few minutes even though my password is correct."),
        ("network", "{app} not syncing|{app} offline on VPN",
         "{app} can't sync when I'm on the VPN, says offline, but the browser works fine."),
        ("billing", "{app} licence expired?|Licence shows expired",
         "{app} says our licence expired although finance says the renewal invoice was paid."),
        ("hardware", "{app} crashes on startup|{app} + second monitor",
         "{app} crashes on startup since I connected the second monitor through the dock."),
        ("network", "{app} update fails|Update error {err_sw}",
         "The {app} update fails halfway with {err_sw} on the office Wi-Fi, maybe a proxy thing?"),
    ),
    "billing": (
        ("software", "Refund for unused {app} licences|Too many licences invoiced",
         "We were invoiced for {n_big} {app} licences but only {n_small} people use it - can we get a "
         "refund for the rest?"),
        ("hardware", "Wrong docks on invoice|Invoice for docking stations",
         "The invoice for the docks we ordered lists the wrong model and charges for {n_small} extra units."),
        ("network", "Still paying VPN for leaver|Stop charges for {name2}",
         "We're still paying a VPN subscription for {name2} who left in {month}, please stop the charges."),
        ("hardware", "PO for new printer|Purchase order: {printer}",
         "Need a PO raised for a replacement {printer} - the old one is beyond repair."),
        ("access", "Billed for leavers' accounts|{vendor} accounts refund",
         "We're billed for {vendor} accounts of people who left - can those be removed and refunded?"),
        ("network", "{vendor} invoice - returned equipment|Invoice includes returned kit",
         "The {vendor} invoice includes a line for network equipment we returned in {month}."),
    ),
}

ONE_LINERS: dict[str, tuple[Template, ...]] = {
    "access": (
        ("Password reset needed|password", "pw reset pls"), ("Account locked out|locked", "locked out"),
        ("login problem|cant log in", "cant log in"), ("Access request|access", "need access to {share}"),
        ("MFA not working|mfa", "mfa broken again"),
    ),
    "hardware": (
        ("printer|Printer jammed", "printer broken again"), ("laptop|Laptop won't turn on", "laptop dead"),
        ("mouse|Request for mouse", "need a new mouse"), ("monitor|Second monitor", "monitor black"),
        ("dock|Docking station not working", "dock dead"),
    ),
    "network": (
        ("vpn|VPN down", "vpn down??"), ("wifi|No Wi-Fi", "no wifi"),
        ("slow|internet slow", "internet super slow"),
        ("{site} down?|Cannot reach {site}", "cant reach {site}"),
        ("wifi|Wi-Fi dropping", "wifi keeps dropping"),
    ),
    "software": (
        ("{app}|Install request: {app}", "need {app}"), ("{app} crash|{app} crashing", "{app} crashed again"),
        ("install|{app} install", "install {app} pls"), ("licence|{app} licence", "{app} licence?"),
        ("{app}|{app} not working", "{app} broken"),
    ),
    "billing": (
        ("invoice|Invoice {inv}", "invoice {inv}?"), ("refund|Refund request", "refund?"),
        ("PO|Purchase order", "need a PO"), ("cancel|Cancel {vendor}", "cancel {vendor} pls"),
        ("charged twice|Duplicate charge", "charged twice"),
    ),
}

CASUAL_SWAPS: tuple[tuple[str, str], ...] = (
    ("please", "pls"), ("Please", "pls"), ("thanks", "thx"), ("Thanks", "thx"), ("you", "u"),
    ("don't", "dont"), ("can't", "cant"), ("I'm", "im"), ("won't", "wont"), ("doesn't", "doesnt"),
    ("because", "bc"), ("I've", "ive"),
)

LOG_LINES: dict[str, tuple[str, ...]] = {
    "network": (
        "[INFO] {vpn}: resolving gateway vpn.acme.example",
        "[INFO] {vpn}: TLS handshake started",
        "[WARN] {vpn}: no response from gateway, retry {k}/5",
        "[ERROR] {vpn}: tunnel closed by peer (reason=idle-timeout)",
        "[INFO] tap0: assigned address {ip}/24",
        "[DEBUG] dns: query {host} A -> SERVFAIL",
        "[WARN] keepalive missed ({k} in a row)",
    ),
    "software": (
        "[INFO] {app} {version} starting, pid={num}",
        "[DEBUG] loading add-in {addin}",
        "[WARN] slow response from licence server ({num} ms)",
        "[ERROR] unhandled exception {hexcode} in module core.dll",
        "[ERROR]   at Core.Document.Open(String path) line {num}",
        "[INFO] crash dump written to C:\\Users\\{user}\\AppData\\Local\\CrashDumps\\dump{num}.dmp",
    ),
    "default": (
        "Information Service Control Manager: service entered the running state ({num})",
        "Warning Kernel-Power: the system has resumed from sleep",
        "Error Application Error: faulting module ntdll.dll, exception code {hexcode}",
        "Information Winlogon: user {user} logged on",
        "Warning Disk: the driver detected a controller error on \\Device\\Harddisk0\\DR{k}",
        "Information Netlogon: secure channel to DC{k} established",
        "Error Security-Kerberos: pre-authentication failed for {user} (0x18)",
    ),
}

# fmt: on

# --------------------------------------------------------------------------------------------------------
# Clean tickets
# --------------------------------------------------------------------------------------------------------


def _pick(rng: random.Random, options: tuple[str, ...]) -> str:
    """Choose one option.

    Args:
        rng: The random generator.
        options: Non-empty tuple of strings.

    Returns:
        One of the options.
    """
    return options[rng.randrange(len(options))]


def _random_slots(rng: random.Random) -> dict[str, str]:
    """Draw a value for every template slot.

    Args:
        rng: The random generator.

    Returns:
        Mapping from slot name to filler text.
    """
    slots = {key: _pick(rng, values) for key, values in SLOTS.items()}
    slots["name2"] = _pick(rng, tuple(name for name in SLOTS["name"] if name != slots["name"]))
    slots["app2"] = _pick(rng, SLOTS["app"])
    slots["user"] = f"{slots['name'].lower()}.{slots['surname'].lower()}"
    slots["floor"] = str(rng.randint(1, 7))
    slots["desk"] = f"{slots['floor']}.{rng.randint(1, 60):02d}"
    slots["room"] = _pick(rng, ("Everest", "Kilimanjaro", "3B", "Blue", "Galileo", "the big boardroom"))
    slots["ip"] = f"10.{rng.randint(0, 40)}.{rng.randint(0, 255)}.{rng.randint(2, 254)}"
    slots["ip2"] = f"10.{rng.randint(0, 40)}.{rng.randint(0, 3)}.{rng.randint(1, 2)}"
    slots["version"] = f"{rng.randint(1, 24)}.{rng.randint(0, 12)}.{rng.randint(0, 9999)}"
    slots["inv"] = f"INV-{rng.randint(2023, 2025)}-{rng.randint(1, 99999):05d}"
    slots["po"] = f"PO-4500{rng.randint(0, 999999):06d}"
    slots["cc"] = f"CC-{rng.randint(1000, 9999)}"
    slots["asset"] = f"AT-{rng.randint(10000, 99999)}"
    slots["serial"] = "".join(_pick(rng, tuple("ABCDEFGHJKLMNPQRSTUVWXYZ0123456789")) for _ in range(7))
    currency = _pick(rng, ("€", "$", "£", "EUR ", "USD "))
    slots["amount"] = f"{currency}{rng.randint(20, 48000):,}.{rng.randint(0, 99):02d}"
    slots["n_small"] = str(rng.randint(2, 15))
    slots["n_big"] = str(rng.randint(20, 250))
    return slots


def _fill(template: str, slots: dict[str, str]) -> str:
    """Fill the ``{slot}`` placeholders of a template.

    Args:
        template: Text with ``str.format`` style named placeholders.
        slots: Values for the placeholders.

    Returns:
        The filled text.
    """
    return template.format_map(slots)


def _make_subject(subjects: str, slots: dict[str, str], rng: random.Random, generic_share: float) -> str:
    """Write a ticket subject line.

    Args:
        subjects: The template's subject options, separated by ``|``.
        slots: Slot values for this ticket.
        rng: The random generator.
        generic_share: Probability of a vague subject ("Help", "Issue") instead of a fitting one.

    Returns:
        The subject.
    """
    pool = GENERIC_SUBJECTS if rng.random() < generic_share else tuple(subjects.split("|"))
    subject = _fill(_pick(rng, pool), slots)
    roll = rng.random()
    if roll < 0.06:
        subject = "URGENT: " + subject
    elif roll < 0.10:
        subject = _pick(rng, ("RE: ", "Fwd: ", "FW: ")) + subject
    elif roll < 0.18:
        subject = subject.lower()
    return subject


def _signoff(slots: dict[str, str], rng: random.Random) -> str:
    """Write a closing line, sometimes with the sender's name.

    Args:
        slots: Slot values for this ticket.
        rng: The random generator.

    Returns:
        The sign-off text (may contain a newline).
    """
    closer = slots["closer"]
    roll = rng.random()
    if roll < 0.35:
        return f"{closer},\n{slots['name']}"
    if roll < 0.5:
        return f"{closer}\n{slots['name']} {slots['surname']} | {slots['office']}"
    if roll < 0.6:
        return f"- {slots['name']}"
    return closer


def _compose_body(
    core: str, detail_queues: tuple[str, ...], slots: dict[str, str], rng: random.Random
) -> str:
    """Assemble a ticket body of varied length around a core sentence: opener, details, urgency, sign-off.

    Args:
        core: The filled core sentence(s).
        detail_queues: Queues whose detail sentences may be added (the ticket's own, plus the borrowed
            one for cross-queue tickets).
        slots: Slot values for this ticket.
        rng: The random generator.

    Returns:
        The body text.
    """
    size = rng.random()
    if size < 0.2:
        return core
    parts = [core]
    n_details = 1 if size < 0.55 else rng.randint(1, 3)
    for detail in rng.sample([d for q in detail_queues for d in DETAILS[q]], n_details):
        parts.append(_fill(detail, slots))
    if rng.random() < 0.3:
        parts.insert(1 if rng.random() < 0.5 else len(parts), slots["urgency"])
    if rng.random() < 0.25 and "{since}" not in core:
        parts.insert(1, f"It's been like this {slots['since']}.")
    text = " ".join(parts)
    if rng.random() < 0.7:
        text = slots["opener"] + _pick(rng, (" ", "\n", "\n\n")) + text
    if rng.random() < 0.75:
        text = text + _pick(rng, ("\n", "\n\n", " ")) + _signoff(slots, rng)
    return text


def _typo(word: str, rng: random.Random) -> str:
    """Introduce one typing mistake into a word (swap, drop or double a letter).

    Args:
        word: A word of at least four letters.
        rng: The random generator.

    Returns:
        The misspelt word.
    """
    i = rng.randint(1, len(word) - 2)
    kind = rng.randrange(3)
    if kind == 0:
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    if kind == 1:
        return word[:i] + word[i + 1 :]
    return word[:i] + word[i] + word[i:]


def _roughen(text: str, rng: random.Random) -> str:
    """Make a text look hastily typed: casual abbreviations, lower case and a few typos.

    Args:
        text: Clean text.
        rng: The random generator.

    Returns:
        The roughened text (unchanged for most tickets).
    """
    if rng.random() < 0.25:
        for formal, casual in CASUAL_SWAPS:
            if rng.random() < 0.6:
                text = re.sub(rf"\b{re.escape(formal)}\b", casual, text)
        if rng.random() < 0.4:
            text = text.lower()
    if rng.random() < 0.22:
        words = text.split(" ")
        for _ in range(rng.randint(1, 3)):
            j = rng.randrange(len(words))
            if len(words[j]) >= 4 and words[j].isalpha():
                words[j] = _typo(words[j], rng)
        text = " ".join(words)
    return text


def _queue_plan(n: int, rng: random.Random) -> list[str]:
    """Lay out the queue label of every row: shares from ``QUEUE_SHARES``, shuffled.

    Args:
        n: Number of rows.
        rng: The random generator.

    Returns:
        ``n`` queue names.
    """
    exact = {q: n * share for q, share in QUEUE_SHARES.items()}
    counts = {q: int(v) for q, v in exact.items()}
    by_remainder = sorted(QUEUES, key=lambda q: (counts[q] - exact[q], QUEUES.index(q)))
    for q in by_remainder[: n - sum(counts.values())]:
        counts[q] += 1
    plan = [q for q in QUEUES for _ in range(counts[q])]
    rng.shuffle(plan)
    return plan


def _clean_ticket(queue: str, rng: random.Random) -> dict[str, str]:
    """Generate one clean ticket (without ticket_id).

    About 10 % are cross-queue tickets (vocabulary of another queue) and 7 % terse one-liners.

    Args:
        queue: The ticket's queue.
        rng: The random generator.

    Returns:
        Dict with ``subject``, ``body`` and ``queue``.
    """
    slots = _random_slots(rng)
    roll = rng.random()
    cross, one_liner = roll < 0.10, 0.10 <= roll < 0.17
    if cross:
        borrowed, subjects, core = CROSS_BODIES[queue][rng.randrange(len(CROSS_BODIES[queue]))]
        detail_queues = (queue, borrowed)
    else:
        subjects, core = _pick(rng, (ONE_LINERS if one_liner else BODIES)[queue])
        detail_queues = (queue,)
    subject = _make_subject(subjects, slots, rng, generic_share=0.4 if cross else 0.12)
    body = _fill(core, slots)
    if not one_liner:
        body = _compose_body(body, detail_queues, slots, rng)
    return {"subject": subject, "body": _roughen(body, rng), "queue": queue}


def _unique_ticket(queue: str, seen: set[tuple[str, str]], rng: random.Random) -> dict[str, str]:
    """Generate a clean ticket whose subject and body are not already taken (only dirty rows duplicate).

    Args:
        queue: The ticket's queue.
        seen: The (subject, body) pairs generated so far.
        rng: The random generator.

    Returns:
        Dict with ``subject``, ``body`` and ``queue``.
    """
    ticket = _clean_ticket(queue, rng)
    for _ in range(50):
        if (ticket["subject"], ticket["body"]) not in seen:
            break
        ticket = _clean_ticket(queue, rng)
    return ticket


# --------------------------------------------------------------------------------------------------------
# Dirty rows
# --------------------------------------------------------------------------------------------------------


def _dirty_plan(n: int, rng: random.Random) -> dict[int, str]:
    """Choose which rows become dirty and how; kinds never overlap.

    Args:
        n: Number of rows.
        rng: The random generator.

    Returns:
        Mapping from row index to dirty kind. Empty when ``n < MIN_ROWS_FOR_DIRTY``.
    """
    if n < MIN_ROWS_FOR_DIRTY:
        return {}
    counts = {kind: max(1, round(share * n)) for kind, share in DIRTY_SHARES.items()}
    # Row 0..9 stay clean so a duplicate always has an earlier clean ticket to copy.
    rows = rng.sample(range(10, n), min(sum(counts.values()), n - 10))
    plan: dict[int, str] = {}
    for kind, count in counts.items():
        for _ in range(count):
            if rows:
                plan[rows.pop()] = kind
    return plan


def _to_html(body: str, rng: random.Random) -> str:
    """Wrap a body in the kind of HTML a mail-to-ticket gateway leaves behind.

    Args:
        body: Plain body text.
        rng: The random generator.

    Returns:
        HTML-marked-up body containing ``<p>``, ``<br>`` and ``&amp;``.
    """
    escaped = body.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    paragraphs = [p.replace("\n", "<br>") for p in escaped.split("\n\n")]
    inner = "".join(f"<p>{p}</p>" for p in paragraphs)
    footer = _pick(rng, ("IT &amp; Facilities", "Sales &amp; Marketing", "R&amp;D", "Finance &amp; Legal"))
    html = f'{inner}<p><span style="color:#888">Sent from the {footer} team</span><br></p>'
    if rng.random() < 0.5:
        html = f'<html><body><div dir="ltr">{html}</div></body></html>'
    return html


def _fullwidth(text: str) -> str:
    """Convert printable ASCII to fullwidth Unicode forms (as IME input sometimes produces).

    Args:
        text: ASCII text.

    Returns:
        The text with ``!``..``~`` mapped to U+FF01..U+FF5E and spaces to U+3000.
    """
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else "\u3000" if c == " " else c for c in text)


def _unicode_oddities(text: str, rng: random.Random) -> str:
    """Sprinkle stray whitespace and invisible or fullwidth characters into a text.

    Args:
        text: Clean text.
        rng: The random generator.

    Returns:
        The text with non-breaking spaces, zero-width spaces, fullwidth words and padding.
    """
    words = text.split(" ")
    for _ in range(max(1, len(words) // 6)):
        j = rng.randrange(len(words))
        words[j] = _pick(rng, ("\u200b", "\ufeff", "")) + words[j]
    if len(words) > 2:
        j = rng.randrange(len(words))
        words[j] = _fullwidth(words[j])
    glue = _pick(rng, ("\u00a0", "  ", " \u00a0"))
    out = "".join(w + (glue if rng.random() < 0.3 else " ") for w in words).rstrip(" ")
    lead = _pick(rng, ("  ", "\t", "\u00a0", " \u200b"))
    return lead + out + _pick(rng, ("   ", "\u00a0\n", " \t", "\u3000"))


def _log_dump(queue: str, rng: random.Random) -> str:
    """Make a pasted log dump longer than ``LONG_BODY_MIN_CHARS``.

    Args:
        queue: The ticket's queue (picks the kind of log).
        rng: The random generator.

    Returns:
        Multi-line log text with increasing timestamps.
    """
    pool = LOG_LINES.get(queue, LOG_LINES["default"])
    slots = _random_slots(rng)
    slots["host"] = _pick(rng, ("intranet.acme.local", "jira.internal", "git.acme.local", "wpad.acme.local"))
    lines: list[str] = []
    size = 0
    clock_ms = rng.randint(7 * 3600, 16 * 3600) * 1000
    while size < LONG_BODY_MIN_CHARS:
        clock_ms += rng.randint(1, 9000)
        slots["k"] = str(rng.randint(1, 5))
        slots["num"] = str(rng.randint(100, 9999))
        slots["hexcode"] = _pick(rng, ("0xc0000005", "0xc0000409", "0xe0434352", "0xc0000374"))
        seconds, millis = divmod(clock_ms, 1000)
        stamp = f"2024-03-12 {seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}.{millis:03d}"
        line = f"{stamp} {_fill(_pick(rng, pool), slots)}"
        lines.append(line)
        size += len(line) + 1
    return "\n".join(lines)


def _dirty(row: dict[str, str], kind: str, earlier: list[dict[str, str]], rng: random.Random) -> None:
    """Turn a clean row into a dirty row of the given kind, in place.

    Args:
        row: The row to spoil (ticket_id is kept).
        kind: One of the keys of ``DIRTY_SHARES``.
        earlier: Clean rows before this one (source for duplicates).
        rng: The random generator.
    """
    if kind == "html":
        row["body"] = _to_html(row["body"], rng)
    elif kind == "duplicate":
        source = _pick_row(earlier, rng)
        row.update(subject=source["subject"], body=source["body"], queue=source["queue"])
    elif kind == "empty":
        row.update(subject="", body="")
    elif kind == "no_queue":
        row["queue"] = ""
    elif kind == "unicode":
        row["subject"] = _unicode_oddities(row["subject"], rng)
        row["body"] = _unicode_oddities(row["body"], rng)
    elif kind == "long":
        intro = _pick(rng, ("here is the log:", "Log below, sorry it's long", "pasting the output:"))
        row["body"] = f"{row['body']}\n\n{intro}\n{_log_dump(row['queue'], rng)}"
    else:
        raise ValueError(f"unknown dirty kind: {kind}")


def _pick_row(rows: list[dict[str, str]], rng: random.Random) -> dict[str, str]:
    """Choose one row.

    Args:
        rows: Non-empty list of rows.
        rng: The random generator.

    Returns:
        One of the rows.
    """
    return rows[rng.randrange(len(rows))]


# --------------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------------


def generate_helpdesk_tickets(n: int = 600, seed: int = 7) -> list[dict[str, str]]:
    """Generate synthetic help-desk tickets, about 6-8 % of them deliberately dirty.

    Args:
        n: Number of rows (tickets), at least 0.
        seed: Seed of the private random generator; the same ``n`` and ``seed`` give the same rows.

    Returns:
        ``n`` dicts with the keys ``ticket_id``, ``subject``, ``body`` and ``queue`` (all strings).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(seed)
    plan = _queue_plan(n, rng)
    dirty = _dirty_plan(n, rng)
    rows: list[dict[str, str]] = []
    clean: list[dict[str, str]] = []
    seen: set[tuple[str, str]] = set()
    number = 10_000 + rng.randint(0, 5000)
    for i, queue in enumerate(plan):
        number += rng.randint(1, 4)
        row = {"ticket_id": f"HD-{number}", **_unique_ticket(queue, seen, rng)}
        seen.add((row["subject"], row["body"]))
        if i in dirty:
            _dirty(row, dirty[i], clean, rng)
        else:
            clean.append(row)
        rows.append(row)
    return rows


def tickets_to_csv(rows: list[dict[str, str]]) -> str:
    """Serialise tickets as CSV text (header, ``\\n`` line endings, minimal quoting).

    Args:
        rows: Tickets as returned by :func:`generate_helpdesk_tickets`.

    Returns:
        The CSV document.
    """
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_helpdesk_tickets(path: str | Path, n: int = 600, seed: int = 7) -> Path:
    """Write synthetic help-desk tickets to a UTF-8 CSV file with header ``ticket_id,subject,body,queue``.

    Args:
        path: Destination file; parent directories are created.
        n: Number of rows.
        seed: Seed of the random generator.

    Returns:
        The path written to.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(tickets_to_csv(generate_helpdesk_tickets(n=n, seed=seed)).encode("utf-8"))
    return path


if __name__ == "__main__":
    target = write_helpdesk_tickets(sys.argv[1] if len(sys.argv) > 1 else DEFAULT_PATH)
    print(f"wrote {target}")
