// Message: a parsed header plus raw data frames, addressed to or from a peer
// of a Transport.
#ifndef EMBER_NET_MESSAGE_H_
#define EMBER_NET_MESSAGE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "net/frame.h"
#include "proto/wire.pb.h"

namespace ember::net {

// A peer of one Transport: a connection it opened (Connect) or a remote that
// sent to its bound endpoint. Only meaningful to the transport that issued it.
using PeerId = uint32_t;
inline constexpr PeerId kNoPeer = 0xffffffffu;

struct Message {
  PeerId peer = kNoPeer;  // destination on send, origin on receive
  proto::Header header;
  std::vector<Frame> frames;  // raw data frames after the header frame
  // On receive: the role the sender authenticated as (CURVE + ZAP, see
  // net/security.h); ROLE_UNSPECIFIED on a link without authentication.
  proto::Role peer_role = proto::ROLE_UNSPECIFIED;
};

// A reply to `request` carrying `code` and `why`, with no data frames.
Message MakeErrorReply(const Message& request, proto::ErrorCode code, const std::string& why);

// A reply skeleton for `request`: same peer, command and request id.
Message MakeReply(const Message& request);

}  // namespace ember::net

#endif  // EMBER_NET_MESSAGE_H_
