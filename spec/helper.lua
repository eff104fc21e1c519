-- spec/helper.lua: loaded before every spec file (see .busted).
-- The helpers live in procthread.testing (public: users load it in their
-- own specs); this file gives them to the project's specs as `H` and as
-- require "helper".  After each test nothing may be left over: no new fd,
-- no child process, no extra thread, and the shared arena's live objects
-- back where they were (H.no_leaks()).
local T = require "procthread.testing"

-- a copy, so that a spec adding its own H.x does not change the module
local H = {}
for k, v in pairs(T) do H[k] = v end

package.loaded["helper"] = H
_G.H = H
return H
