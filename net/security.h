// Security: CURVE keys for ember's links and who may send what.
//
// With keys configured (`ember keygen`, flag --keys_dir), every ZeroMQ
// socket runs CURVE: traffic is encrypted, a connecting node checks the
// bound node's public key, and the bound node's ZAP handler admits only the
// public keys listed in authorized_keys, each with a role (scheduler,
// server, worker, admin). Every message received then carries its sender's
// authenticated role (Message::peer_role), and Authorize() decides what that
// role may send. See docs/security.md for the threat model.
//
// Key files are text. A node's key pair (<dir>/<role>.key, mode 0600):
//   # comment
//   public = <40 Z85 characters>
//   secret = <40 Z85 characters>
// The authorised keys (<dir>/authorized_keys), one per line:
//   <role> <40 Z85 characters of a public key> [comment]
#ifndef EMBER_NET_SECURITY_H_
#define EMBER_NET_SECURITY_H_

#include <string>
#include "absl/strings/string_view.h"

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "proto/wire.pb.h"

namespace ember::net {

// "scheduler", "server", "worker", "admin"; "unauthenticated" for
// ROLE_UNSPECIFIED.
absl::string_view RoleName(proto::Role role);
// The inverse of RoleName for the four key roles; ROLE_UNSPECIFIED if none.
proto::Role ParseRole(absl::string_view name);

struct KeyPair {
  std::string public_key;  // Z85, 40 characters
  std::string secret_key;  // Z85, 40 characters
};

// A fresh CURVE key pair (libsodium via ZeroMQ).
[[nodiscard]] absl::StatusOr<KeyPair> GenerateKeyPair();

// What one node needs to run CURVE. Default-constructed: security off.
struct SecurityOptions {
  KeyPair self;
  // Public key (Z85) -> the role it may act as.
  absl::flat_hash_map<std::string, proto::Role> authorized;

  bool enabled() const { return !self.public_key.empty(); }
  // The public key a node must present to be trusted as `role`: the one
  // listed key of that role. Connecting to a scheduler or server needs it.
  [[nodiscard]] absl::StatusOr<std::string> KeyOf(proto::Role role) const;
};

// Reads a key pair file; refuses one that others may read (mode & 077) or
// whose keys do not form a pair. Errors name the file (and line).
[[nodiscard]] absl::StatusOr<KeyPair> ReadKeyPair(const std::string& path);
[[nodiscard]] absl::StatusOr<absl::flat_hash_map<std::string, proto::Role>> ReadAuthorizedKeys(
    const std::string& path);

// Loads the keys of a node of `role`: `key_file` (empty: <dir>/<role>.key)
// and <dir>/authorized_keys. The node's own public key must be listed there
// with its role.
[[nodiscard]] absl::StatusOr<SecurityOptions> LoadSecurity(const std::string& dir, proto::Role role,
                                                           const std::string& key_file = "");

// `ember keygen`: creates `dir` (which must not exist, or be empty) with one
// key pair per role (scheduler.key, server.key, worker.key, admin.key, mode
// 0600) and authorized_keys listing their public keys. Never overwrites a
// file.
[[nodiscard]] absl::Status WriteClusterKeys(const std::string& dir);

// Whether a peer authenticated as `sender` may send `command` to a node of
// role `receiver`. Servers take data requests (PULL, PUSH, DENSE_*) from
// workers and the scheduler, and admin commands (SAVE, RESTORE,
// LIST_CHECKPOINTS, SWEEP, STATS, RESET_TABLE) from the scheduler and admin
// keys; the scheduler takes REGISTER only from the role being registered and
// everything else from registered servers and workers; PING is open to every
// authenticated peer. On a link without authentication (sender
// ROLE_UNSPECIFIED) callers must not call this: there is nothing to check.
[[nodiscard]] absl::Status Authorize(proto::Role receiver, proto::Role sender, const proto::Header& header);

}  // namespace ember::net

#endif  // EMBER_NET_SECURITY_H_
