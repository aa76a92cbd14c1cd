// Security: see security.h.
#include "net/security.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zmq.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace ember::net {
namespace {

constexpr proto::Role kKeyRoles[] = {proto::SCHEDULER, proto::SERVER, proto::WORKER, proto::ADMIN};

absl::Status CheckZ85Key(absl::string_view key, const std::string& where) {
  if (key.size() != 40) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": a key is 40 Z85 characters, this one has ", key.size()));
  }
  uint8_t raw[32];
  const std::string copy(key);
  if (zmq_z85_decode(raw, copy.c_str()) == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": not a Z85-encoded key"));
  }
  return absl::OkStatus();
}

absl::Status WriteNewFile(const std::string& path, const std::string& text, mode_t mode) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
  if (fd < 0) return absl::UnavailableError(absl::StrCat("cannot create ", path, ": ", std::strerror(errno)));
  const bool ok = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size()) && ::fsync(fd) == 0;
  const int err = errno;
  ::close(fd);
  if (!ok) return absl::UnavailableError(absl::StrCat("cannot write ", path, ": ", std::strerror(err)));
  return absl::OkStatus();
}

}  // namespace

absl::string_view RoleName(proto::Role role) {
  switch (role) {
    case proto::SCHEDULER:
      return "scheduler";
    case proto::SERVER:
      return "server";
    case proto::WORKER:
      return "worker";
    case proto::ADMIN:
      return "admin";
    default:
      return "unauthenticated";
  }
}

proto::Role ParseRole(absl::string_view name) {
  for (proto::Role r : kKeyRoles) {
    if (name == RoleName(r)) return r;
  }
  return proto::ROLE_UNSPECIFIED;
}

absl::StatusOr<KeyPair> GenerateKeyPair() {
  char pub[41], sec[41];
  if (zmq_curve_keypair(pub, sec) != 0) {
    return absl::UnavailableError(absl::StrCat("zmq_curve_keypair: ", zmq_strerror(zmq_errno()),
                                               " (is libzmq built with CURVE?)"));
  }
  return KeyPair{pub, sec};
}

absl::StatusOr<std::string> SecurityOptions::KeyOf(proto::Role role) const {
  const std::string* found = nullptr;
  int n = 0;
  for (const auto& [key, r] : authorized) {
    if (r != role) continue;
    found = &key;
    ++n;
  }
  if (n != 1) {
    return absl::FailedPreconditionError(
        absl::StrCat("authorized_keys lists ", n, " ", RoleName(role), " keys; connecting to a ", RoleName(role),
                     " needs exactly one (the key its nodes share)"));
  }
  return *found;
}

absl::StatusOr<KeyPair> ReadKeyPair(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) {
    return absl::NotFoundError(absl::StrCat("key file ", path, ": ", std::strerror(errno)));
  }
  if ((st.st_mode & 077) != 0) {
    return absl::PermissionDeniedError(absl::StrFormat("key file %s: readable by others (mode %04o); chmod 600 it",
                                                       path, st.st_mode & 0777));
  }
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("key file ", path, ": cannot open"));
  KeyPair kp;
  std::string line;
  for (int n = 1; std::getline(in, line); ++n) {
    absl::string_view s = absl::StripAsciiWhitespace(line);
    if (s.empty() || s[0] == '#') continue;
    const std::vector<absl::string_view> kv = absl::StrSplit(s, absl::MaxSplits('=', 1));
    const std::string where = absl::StrCat(path, ":", n);
    if (kv.size() != 2) return absl::InvalidArgumentError(absl::StrCat(where, ": expected 'public = KEY' or 'secret = KEY'"));
    const absl::string_view name = absl::StripAsciiWhitespace(kv[0]);
    const absl::string_view value = absl::StripAsciiWhitespace(kv[1]);
    if (absl::Status c = CheckZ85Key(value, where); !c.ok()) return c;
    if (name == "public") {
      kp.public_key = std::string(value);
    } else if (name == "secret") {
      kp.secret_key = std::string(value);
    } else {
      return absl::InvalidArgumentError(absl::StrCat(where, ": unknown field '", name, "'"));
    }
  }
  if (kp.public_key.empty() || kp.secret_key.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("key file ", path, ": needs both a public and a secret key"));
  }
  char derived[41];
  if (zmq_curve_public(derived, kp.secret_key.c_str()) != 0 || kp.public_key != derived) {
    return absl::InvalidArgumentError(absl::StrCat("key file ", path, ": the public key is not the secret key's"));
  }
  return kp;
}

absl::StatusOr<absl::flat_hash_map<std::string, proto::Role>> ReadAuthorizedKeys(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("authorized keys ", path, ": cannot open"));
  absl::flat_hash_map<std::string, proto::Role> keys;
  std::string line;
  for (int n = 1; std::getline(in, line); ++n) {
    absl::string_view s = absl::StripAsciiWhitespace(line);
    if (s.empty() || s[0] == '#') continue;
    const std::vector<absl::string_view> f = absl::StrSplit(s, absl::ByAnyChar(" \t"), absl::SkipEmpty());
    const std::string where = absl::StrCat(path, ":", n);
    if (f.size() < 2) return absl::InvalidArgumentError(absl::StrCat(where, ": expected '<role> <public key> [comment]'"));
    const proto::Role role = ParseRole(f[0]);
    if (role == proto::ROLE_UNSPECIFIED) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": unknown role '", f[0], "' (scheduler, server, worker or admin)"));
    }
    if (absl::Status c = CheckZ85Key(f[1], where); !c.ok()) return c;
    auto [it, inserted] = keys.emplace(std::string(f[1]), role);
    if (!inserted && it->second != role) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": this key is already listed as ", RoleName(it->second),
                                                     "; a key has one role"));
    }
  }
  if (keys.empty()) return absl::InvalidArgumentError(absl::StrCat("authorized keys ", path, ": lists no key"));
  return keys;
}

absl::StatusOr<SecurityOptions> LoadSecurity(const std::string& dir, proto::Role role, const std::string& key_file) {
  SecurityOptions o;
  const std::string own = key_file.empty() ? absl::StrCat(dir, "/", RoleName(role), ".key") : key_file;
  absl::StatusOr<KeyPair> kp = ReadKeyPair(own);
  if (!kp.ok()) return kp.status();
  absl::StatusOr<absl::flat_hash_map<std::string, proto::Role>> auth = ReadAuthorizedKeys(dir + "/authorized_keys");
  if (!auth.ok()) return auth.status();
  o.self = *kp;
  o.authorized = *std::move(auth);
  auto it = o.authorized.find(o.self.public_key);
  if (it == o.authorized.end() || it->second != role) {
    return absl::FailedPreconditionError(absl::StrCat("key file ", own, ": its public key is not listed as ",
                                                      RoleName(role), " in ", dir, "/authorized_keys"));
  }
  return o;
}

absl::Status WriteClusterKeys(const std::string& dir) {
  std::error_code ec;
  if (std::filesystem::exists(dir, ec) && !std::filesystem::is_empty(dir, ec)) {
    return absl::AlreadyExistsError(
        absl::StrCat("keygen: ", dir, " exists and is not empty; keys are never overwritten, choose a new --out"));
  }
  std::filesystem::create_directories(dir, ec);
  if (ec) return absl::UnavailableError(absl::StrCat("keygen: cannot create ", dir, ": ", ec.message()));
  ::chmod(dir.c_str(), 0700);
  std::string authorized =
      "# ember authorised keys: <role> <public key> [comment]. Roles: scheduler, server, worker, admin.\n";
  for (proto::Role r : kKeyRoles) {
    absl::StatusOr<KeyPair> kp = GenerateKeyPair();
    if (!kp.ok()) return kp.status();
    const std::string name = std::string(RoleName(r));
    const std::string text = absl::StrCat("# ember CURVE key pair, role ", name, ". Keep secret.\npublic = ",
                                          kp->public_key, "\nsecret = ", kp->secret_key, "\n");
    if (absl::Status st = WriteNewFile(absl::StrCat(dir, "/", name, ".key"), text, 0600); !st.ok()) return st;
    absl::StrAppend(&authorized, name, " ", kp->public_key, " ", name, ".key\n");
  }
  return WriteNewFile(dir + "/authorized_keys", authorized, 0644);
}

absl::Status Authorize(proto::Role receiver, proto::Role sender, const proto::Header& header) {
  const proto::Command c = header.command();
  auto refuse = [&](absl::string_view why) {
    return absl::PermissionDeniedError(absl::StrCat("a ", RoleName(sender), " key may not send ",
                                                    proto::Command_Name(c), " to a ", RoleName(receiver), why));
  };
  if (sender == proto::ROLE_UNSPECIFIED) return refuse(" (unauthenticated peer)");
  if (c == proto::PING) return absl::OkStatus();
  if (receiver == proto::SERVER) {
    switch (c) {
      case proto::PULL:
      case proto::PUSH:
      case proto::DENSE_PULL:
      case proto::DENSE_PUSH:
        if (sender == proto::WORKER || sender == proto::SCHEDULER) return absl::OkStatus();
        return refuse(" (data requests come from workers and the scheduler)");
      case proto::SAVE:
      case proto::RESTORE:
      case proto::LIST_CHECKPOINTS:
      case proto::RESET_TABLE:
      case proto::SWEEP:
      case proto::STATS:
        if (sender == proto::SCHEDULER || sender == proto::ADMIN) return absl::OkStatus();
        return refuse(" (admin commands come from the scheduler and admin keys)");
      default:
        return refuse("");
    }
  }
  if (receiver == proto::SCHEDULER) {
    if (c == proto::REGISTER) {
      const proto::Role claimed = header.register_request().node().role();
      if (claimed == sender && (sender == proto::SERVER || sender == proto::WORKER)) return absl::OkStatus();
      return refuse(absl::StrCat(" registering as ", RoleName(claimed), " (the key's role must be the node's)"));
    }
    if (sender == proto::SERVER || sender == proto::WORKER) return absl::OkStatus();
    return refuse(" (only registered servers and workers talk to the scheduler)");
  }
  return refuse(" (this node takes no requests)");
}

}  // namespace ember::net
