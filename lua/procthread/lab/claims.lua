-- procthread.lab.claims: the classic "process vs thread" comparison the
-- lab measures, written once.  Each built-in experiment takes its claim
-- from here; the harness and the report take the order and the text of
-- the claims table from here (a claim whose experiment is not installed
-- still gets its row).
--
--   claims.order          the built-in experiments, in the claims table's order
--   claims.by_name[name]  { aspect = its row, process = claim, thread = claim }
local M = {}

M.order = { "memory", "communication", "isolation", "creation", "failure", "cpu", "backend" }

M.by_name = {
  memory = { aspect = "memory", process = "separate memory space", thread = "shared memory within the process" },
  communication = { aspect = "communication", process = "IPC, slower and more complex", thread = "shared variables, fast and easy" },
  isolation = { aspect = "isolation", process = "fully isolated (safer)", thread = "not isolated: a bad write can corrupt the others' data" },
  creation = { aspect = "creation overhead", process = "high", thread = "low" },
  failure = { aspect = "failure impact", process = "one crashing does not affect the others", thread = "one crashing takes the whole process down" },
  cpu = { aspect = "CPU use", process = "leverage multiple cores safely", thread = "parallelism inside one process" },
  backend = { aspect = "backend", process = "worker processes, isolated services", thread = "a thread pool handling requests in one server" },
}

return M
