-- procthread.lab.main: the command line of the lab (bin/procthread-lab).
--
--   procthread-lab list
--   procthread-lab run [NAME | FILE.lua ...] [--quick | --tiny] [--out DIR]
--   procthread-lab report RESULTS.json [--out DIR]
--   procthread-lab compare A/results.json B/results.json
--
-- Exit codes: 0 done; 1 the lab could not finish (an error it did not
-- expect, a library it needs is missing, an experiment's run raised);
-- 2 bad input (unknown experiment, unwritable --out, bad option).
local claims = require "procthread.lab.claims"
local util = require "procthread.lab.util"

local M = {}

local USAGE = [[
usage: procthread-lab list
       procthread-lab run [NAME | FILE.lua ...] [--quick] [--all] [--out DIR]
       procthread-lab report RESULTS.json [--all] [--out DIR]
       procthread-lab compare A/results.json B/results.json

  run      runs the named experiments (all built-in ones when none is named)
           and writes REPORT.md, results.json and SVG charts into DIR
           (default: report).  A NAME ending in .lua or holding a / is a
           user's experiment file.
  --quick  smaller parameters (the whole lab in under a minute)
  --tiny   smallest parameters (for the test suite)
  --all    the claims table lists every claim, also those not run (the
           default when no experiment is named)
  report   renders REPORT.md and the charts again from a saved results.json
           (verdicts recomputed with the current rules), into DIR
           (default: the folder of RESULTS.json)
  compare  prints (Markdown) the verdicts and measurements of two results
           files side by side: two machines, or two runs
  list     the built-in experiments and the claim each one tests
]]

local function dirname(p)
  local d = p:match("^(.*)/[^/]*$")
  if d == nil then return "." end
  if d == "" then return "/" end
  return d
end

-- Make DIR and check that a file can be written in it; else the message.
local function prepare_out(dir)
  local function bad(why) return nil, ("cannot write to --out '%s': %s"):format(dir, tostring(why)) end
  if dir == "" then return bad("empty directory name") end
  util.execute("mkdir -p " .. util.shell_quote(dir) .. " 2>/dev/null")
  local probe = dir .. "/.procthread-lab-probe"
  local f, err = io.open(probe, "w")
  if not f then return bad(err) end
  f:close()
  os.remove(probe)
  return true
end

function M.main(argv, io_out, io_err)
  local out, err = io_out or io.stdout, io_err or io.stderr
  local function fail(code, msg)
    err:write("procthread-lab: ", msg, "\n")
    return code
  end
  -- write the report of doc into dir; the exit code
  -- 1 when an experiment's run raised or every sample it took failed (it
  -- is "not measured" in the report)
  local function render(doc, dir, opts_)
    local files, werr = require("procthread.lab.report").render(doc, dir, opts_)
    if not files then return fail(1, werr) end
    out:write(("wrote %s (%d files)\n"):format(dir .. "/REPORT.md", #files))
    local code = 0
    for _, res in ipairs(doc.experiments) do
      local failed = not res.error and require("procthread.lab").all_failed(res)
      if res.error then
        code = fail(1, ("%s: run failed: %s"):format(res.name, (res.error:match("[^\n]*"))))
      elseif failed then
        code = fail(1, ("%s: %s"):format(res.name, failed))
      end
    end
    return code
  end
  argv = argv or {}
  local cmd = argv[1]
  if cmd == nil or cmd == "help" or cmd == "--help" or cmd == "-h" then
    (cmd == nil and err or out):write(USAGE)
    return cmd == nil and 2 or 0
  end
  local okl, lab = pcall(require, "procthread.lab")
  if not okl then return fail(1, "cannot load the lab: " .. tostring(lab)) end

  -- options
  local names, opts = {}, { mode = "full" }
  local i = 2
  while i <= #argv do
    local a = argv[i]
    if a == "--quick" then opts.mode = "quick"
    elseif a == "--tiny" then opts.mode = "tiny"
    elseif a == "--out" then
      i = i + 1
      if not argv[i] then return fail(2, "--out needs a directory") end
      opts.out = argv[i]
    elseif a:match("^%-%-out=") then opts.out = a:sub(7)
    elseif a == "--quiet" then opts.quiet = true
    elseif a == "--all" then opts.all = true
    elseif a:match("^%-") then return fail(2, ("unknown option '%s'\n%s"):format(a, USAGE))
    else names[#names + 1] = a end
    i = i + 1
  end

  if cmd == "run" or cmd == "report" or cmd == "compare" then
    local missing = require("procthread.lab.json").missing()
    if missing then return fail(1, missing) end
  end

  if cmd == "list" then
    for _, name in ipairs(claims.order) do
      local exp, e2 = lab.load(name)
      local c = claims.by_name[name]
      local claim = c and ("%s — process: %s; thread: %s"):format(c.aspect, c.process, c.thread) or ""
      if exp then
        out:write(("%-14s %s\n%-14s claim: %s\n"):format(name, exp.title or "", "", claim))
      elseif e2 and e2:match("^unknown experiment") then
        out:write(("%-14s (not present)\n%-14s claim: %s\n"):format(name, "", claim))
      else
        out:write(("%-14s (broken: %s)\n"):format(name, e2))
      end
    end
    return 0

  elseif cmd == "run" then
    local dir = opts.out or "report"
    -- load everything first: bad input is reported before any run
    for _, n in ipairs(names) do
      local exp, e2 = lab.load(n)
      if not exp then return fail(2, e2) end
    end
    local okd, derr = prepare_out(dir)
    if not okd then return fail(2, derr) end
    local okp, pt = pcall(require, "procthread")
    if not okp then return fail(1, "cannot load procthread: " .. tostring(pt)) end
    local progress = lab.progress({ quiet = opts.quiet, now = pt.now })
    local doc, rerr = lab.run({ names = names, mode = opts.mode, pt = pt, progress = progress })
    if not doc then return fail(2, rerr) end
    return render(doc, dir, { all = opts.all })

  elseif cmd == "report" then
    if #names ~= 1 then return fail(2, "report needs one results.json\n" .. USAGE) end
    local report = require "procthread.lab.report"
    local doc, rerr = report.read(names[1])
    if not doc then return fail(2, rerr) end
    local dir = opts.out or dirname(names[1])
    local okd, derr = prepare_out(dir)
    if not okd then return fail(2, derr) end
    lab.reverdict(doc)
    -- results.json is only written when rendering somewhere else
    return render(doc, dir, { json = opts.out ~= nil, all = opts.all })

  elseif cmd == "compare" then
    if #names ~= 2 then return fail(2, "compare needs two results.json files\n" .. USAGE) end
    local report = require "procthread.lab.report"
    local a, e1 = report.read(names[1])
    if not a then return fail(2, e1) end
    local b, e2 = report.read(names[2])
    if not b then return fail(2, e2) end
    out:write(report.compare(a, b, names[1], names[2]))
    return 0
  end
  return fail(2, ("unknown command '%s'\n%s"):format(tostring(cmd), USAGE))
end

-- Run as a script (bin/procthread-lab): `...` is then the command line,
-- not the module name given by require.
if (...) ~= "procthread.lab.main" then
  local code = M.main(arg)
  io.stdout:flush(); io.stderr:flush()
  os.exit(code)
end

return M
