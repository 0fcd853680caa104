// A Lambda-style Node handler: package.json's dependencies are installed by npm at deploy.
const ms = require("ms");

exports.handler = async (event, context) => {
  const name = (event && event.queryStringParameters && event.queryStringParameters.name)
    || (event && event.name) || "world";
  console.log(`greeting ${name}`);
  return {
    message: `hello ${name} from Node ${process.version}`,
    uptime: ms(Math.round(process.uptime() * 1000)),
    requestId: context.awsRequestId,
    remainingMs: context.getRemainingTimeInMillis(),
  };
};
