"""Executors (how a chunk of clients runs), device meshes, and multi-process runs."""

from fedjax_keras.parallel._choose import agree_across_processes as agree_across_processes
from fedjax_keras.parallel._choose import choose_fastest as choose_fastest
from fedjax_keras.parallel._distributed import COORDINATOR_ENV as COORDINATOR_ENV
from fedjax_keras.parallel._distributed import NUM_PROCESSES_ENV as NUM_PROCESSES_ENV
from fedjax_keras.parallel._distributed import PROCESS_ID_ENV as PROCESS_ID_ENV
from fedjax_keras.parallel._distributed import initialize as initialize
from fedjax_keras.parallel._distributed import process_count as process_count
from fedjax_keras.parallel._distributed import process_index as process_index
from fedjax_keras.parallel._executor import BoundExecutor as BoundExecutor
from fedjax_keras.parallel._executor import Chunk as Chunk
from fedjax_keras.parallel._executor import ChunkInfo as ChunkInfo
from fedjax_keras.parallel._executor import ChunkProgram as ChunkProgram
from fedjax_keras.parallel._executor import Executor as Executor
from fedjax_keras.parallel._executor import HostChunk as HostChunk
from fedjax_keras.parallel._executor import RoundInputs as RoundInputs
from fedjax_keras.parallel._mesh import Placement as Placement
from fedjax_keras.parallel._mesh import check_mesh as check_mesh
from fedjax_keras.parallel._mesh import default_mesh as default_mesh
from fedjax_keras.parallel._stepwise import Stepwise as Stepwise
from fedjax_keras.parallel._vmap import Vmap as Vmap
