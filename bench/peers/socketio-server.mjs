// Socket.IO 4 peer of the side-by-side benchmark (BENCHMARKS.md): rooms, one emit per token, as its docs teach.
// A client joins a room with an acknowledged `join`; a producer's `token` event (room, data) is emitted to the room.
// WebSocket transport only (the load tool speaks Engine.IO v4 over a plain WebSocket), no compression.
// Usage: node socketio-server.mjs [port]   (prints `listening on 127.0.0.1:PORT`)
import { createServer } from "node:http";
import { Server } from "socket.io";

const http = createServer();
const io = new Server(http, { transports: ["websocket"], perMessageDeflate: false, serveClient: false });
io.on("connection", (socket) => {
  socket.on("join", (room, ack) => {
    socket.join(room);
    if (typeof ack === "function") ack();
  });
  socket.on("token", (room, data) => io.to(room).emit("token", data));
});
http.listen(Number(process.argv[2] ?? 0), "127.0.0.1", () => {
  console.log(`listening on 127.0.0.1:${http.address().port}`);
});
