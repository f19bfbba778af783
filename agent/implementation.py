"""Who we are to a peer: the Implementation Class UID and Version Name (PS3.7 D.3.3.2).

One implementation, one identity: the same values go into every Part 10 file's meta
information (agent.iod.part10) and into every association we request or accept (agent.net.ae:
A-ASSOCIATE-RQ and -AC), so that an archive's logs and a conformance statement name the agent,
not the library it is built on. Nothing to import here: the IOD builder and the network both
read it.
"""

from __future__ import annotations

#: made once from a UUID under 2.25; never change it for the same implementation version:
#: peers may key work-arounds on it
IMPLEMENTATION_CLASS_UID = "2.25.280777476021075484815203542916037057289"

#: at most 16 characters; bump with every release that changes the encoding or the protocol
IMPLEMENTATION_VERSION_NAME = "MODAGENT_010"
